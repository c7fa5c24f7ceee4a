// The VRAM timeline of a change as an inline SVG: free GPU memory over time (where a probe measured it)
// and one marker per coordinator event, with the events listed under the chart.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLOURS = { request: "#888", unload: "#d9534f", "unload-requested": "#d9534f", wait: "#f0ad4e",
                    granted: "#2a9d8f", release: "#5b7bd5", measure: "#aaa" };
  function s(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function colour(name) {
    for (const k in COLOURS) if (name.indexOf(k) === 0) return COLOURS[k];
    return "#39c5bb";
  }
  function draw(container, timeline) {
    container.textContent = "";
    if (!timeline || !timeline.length) {
      container.appendChild(window.panel.el("p", { class: "muted", text: "No VRAM reservation in this change." }));
      return;
    }
    const W = 760, H = 250, L = 64, R = 16, T = 26, B = 40;
    const tMax = Math.max(0.001, Math.max.apply(null, timeline.map(function (e) { return e.t; })));
    const measured = timeline.filter(function (e) { return e.free_mib !== null && e.free_mib !== undefined; });
    const fMax = measured.length ? Math.max.apply(null, measured.map(function (e) { return e.free_mib; })) * 1.1 : 1;
    const x = function (t) { return L + (W - L - R) * (t / tMax); };
    const y = function (f) { return T + (H - T - B) * (1 - f / fMax); };
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, class: "vram", role: "img",
                           "aria-label": "VRAM timeline: " + timeline.length + " events over " + tMax.toFixed(3) + " s" });
    svg.appendChild(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
    svg.appendChild(s("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
    for (let i = 0; i <= 4; i++) {
      const t = tMax * i / 4;
      svg.appendChild(s("text", { x: x(t), y: H - B + 16, "text-anchor": "middle", class: "tick" }, t.toFixed(t < 1 ? 3 : 1) + " s"));
    }
    if (measured.length) {
      for (let i = 0; i <= 2; i++) {
        const f = fMax * i / 2;
        svg.appendChild(s("text", { x: L - 6, y: y(f) + 4, "text-anchor": "end", class: "tick" }, Math.round(f) + ""));
      }
      svg.appendChild(s("text", { x: 4, y: 12, class: "tick" }, "free MiB"));
      // A step line: free memory holds its value until the next measurement.
      let d = "M" + x(measured[0].t).toFixed(1) + " " + y(measured[0].free_mib).toFixed(1);
      measured.slice(1).forEach(function (e) { d += " H" + x(e.t).toFixed(1) + " V" + y(e.free_mib).toFixed(1); });
      d += " H" + x(tMax).toFixed(1);
      svg.appendChild(s("path", { d: d, fill: "none", stroke: "#39c5bb", "stroke-width": 2.5, class: "free-line" }));
    } else {
      svg.appendChild(s("text", { x: L + 8, y: T + 14, class: "tick" }, "no GPU probe: events only (free memory not measured)"));
    }
    timeline.forEach(function (e, i) {
      const cx = x(e.t);
      const cy = (e.free_mib !== null && e.free_mib !== undefined) ? y(e.free_mib) : (H - B - 12 - (i % 4) * 14);
      svg.appendChild(s("line", { x1: cx, y1: T, x2: cx, y2: H - B, stroke: colour(e.event), "stroke-dasharray": "2,3", "stroke-width": 1 }));
      const dot = s("circle", { cx: cx, cy: cy, r: 5, fill: colour(e.event), class: "event-dot", "data-event": e.event });
      dot.appendChild(s("title", {}, e.t.toFixed(3) + " s " + e.event + (e.consumer ? " " + e.consumer : "") +
        (e.free_mib != null ? " · " + e.free_mib + " MiB free" : "") + (e.detail ? " · " + e.detail : "")));
      svg.appendChild(dot);
    });
    container.appendChild(svg);
    const rows = timeline.map(function (e) {
      return window.panel.el("tr", {}, [
        window.panel.el("td", { text: e.t.toFixed(3) + " s" }),
        window.panel.el("td", {}, [window.panel.el("span", { class: "swatch ev-" + e.event.split("-")[0], text: e.event })]),
        window.panel.el("td", { text: e.consumer || "" }),
        window.panel.el("td", { text: e.free_mib != null ? e.free_mib + " MiB" : "—" }),
        window.panel.el("td", { text: e.detail || "" }),
      ]);
    });
    const head = window.panel.el("tr", {}, ["t", "event", "consumer", "free", "detail"].map(function (h) { return window.panel.el("th", { text: h }); }));
    container.appendChild(window.panel.el("table", { class: "grid events" }, [head].concat(rows)));
  }
  window.drawVramChart = draw;
})();
