// Shared by every page: JSON calls to the panel's API carrying the session's CSRF token.
"use strict";
(function () {
  function csrf() {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  }
  async function api(method, url, opts) {
    opts = opts || {};
    const headers = { "X-CSRF-Token": csrf(), "Accept": "application/json" };
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.form !== undefined) {
      body = opts.form; // FormData: the browser sets the multipart boundary
    }
    const r = await fetch(url, { method, headers, body, credentials: "same-origin" });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return { status: r.status, ok: r.ok, body: data };
  }
  function detail(res) {
    const d = res.body && res.body.detail;
    if (!d) return "HTTP " + res.status;
    if (typeof d === "string") return d;
    return d.map(function (e) { return (e.loc || []).join(".") + ": " + e.msg; }).join("; ");
  }
  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const k in (attrs || {})) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else e.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  // Follow a change's Server-Sent Events; onEvent(ev) for each, onEnd(endInfo) once.
  function follow(id, onEvent, onEnd) {
    const es = new EventSource("/profile-picture/changes/" + id + "/events");
    es.addEventListener("progress", function (m) { onEvent(JSON.parse(m.data)); });
    es.addEventListener("end", function (m) { es.close(); onEnd(JSON.parse(m.data)); });
    es.onerror = function () { if (es.readyState === EventSource.CLOSED) onEnd(null); };
    return es;
  }
  window.panel = { csrf: csrf, api: api, detail: detail, el: el, follow: follow };
})();
