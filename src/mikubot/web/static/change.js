// Actions → Profile Picture: start a change, follow its stages live, then show the avatar, the
// candidates (faces and crop) and the VRAM chart. Also the custom-image upload → preview → apply.
"use strict";
(function () {
  const P = window.panel;
  const root = document.getElementById("pp");
  const stages = {};
  document.querySelectorAll("#stages li").forEach(function (li) { stages[li.dataset.stage] = li; });
  const message = document.getElementById("message");

  function say(text, kind) { message.textContent = text; message.className = "message " + (kind || ""); }

  function reset(id, kind) {
    Object.values(stages).forEach(function (li) {
      li.className = "waiting";
      li.querySelector(".detail").textContent = "";
      li.querySelector(".ms").textContent = "";
    });
    const title = "— " + (kind || "change") + " #" + id;
    document.getElementById("change-title").textContent = title;
    // What a finished change found belongs to that change: while this one runs, say so instead of leaving
    // the previous change's candidates and timeline on screen under no name.
    const waiting = "Change #" + id + " is running: its candidates appear when it ends.";
    ["candidates-title", "vram-title"].forEach(function (t) { document.getElementById(t).textContent = title; });
    const box = document.getElementById("candidates");
    box.textContent = "";
    box.appendChild(P.el("p", { class: "muted running-note", text: waiting }));
    const chart = document.getElementById("vram-chart");
    chart.textContent = "";
    chart.appendChild(P.el("p", { class: "muted running-note", text: "Change #" + id + " is running: its VRAM timeline appears when it ends." }));
  }

  function describe(ev) {
    const d = ev.detail || {};
    if (ev.status === "fail" || ev.status === "fallback" || ev.status === "skip") return d.error || d.reason || d.to || "";
    if (ev.status === "done" && d.summary) return d.summary; // the stage's last word, over all of its candidates
    if (ev.stage === "search" && d.found !== undefined) return d.found + " candidate(s)";
    if (ev.stage === "download" && d.size) return (d.key || "").slice(0, 32) + " " + d.size[0] + "×" + d.size[1];
    if (ev.stage === "verify" && d.confidence !== undefined) return d.method + ": " + d.confidence.toFixed(2) + " " + (d.description || "");
    if ((ev.stage === "verify" || ev.stage === "reserve") && d.reserved) return "reserved " + d.reserved + " after " + d.waited_s.toFixed(2) + " s";
    if (ev.stage === "detect" && d.faces !== undefined) return d.faces + " face(s) via " + d.via;
    if (ev.stage === "crop" && d.method) return d.method + " crop " + JSON.stringify(d.box);
    if (ev.stage === "record" && d.status) return d.status;
    if (ev.stage === "upload" && ev.status === "start") return d.dry_run ? "dry run" : "uploading";
    return "";
  }

  const STICKY = { fallback: 1, failed: 1, skipped: 1 };
  function onEvent(ev) {
    const li = stages[ev.stage];
    if (!li) return;
    let cls = { start: "running", progress: "running", done: "done", skip: "running", fallback: "fallback", fail: "failed" }[ev.status];
    if (ev.stage === "upload" && ev.status === "skip") cls = "skipped";
    if (STICKY[li.className] && cls !== "failed") cls = li.className; // a stage that fell back stays marked
    li.className = cls;
    const text = describe(ev);
    if (text) li.querySelector(".detail").textContent = text;
    if (ev.detail && ev.detail.ms !== undefined) li.querySelector(".ms").textContent = Math.round(ev.detail.ms) + " ms";
  }

  function showAvatar(rec) {
    const img = document.getElementById("avatar");
    const cap = document.getElementById("avatar-caption");
    if (rec.avatar_url) {
      img.src = rec.avatar_url + "?v=" + rec.id;
      img.hidden = false;
    }
    const credit = rec.credit || {};
    const parts = ["#" + rec.id + " " + rec.status];
    if (credit.artist) parts.push("art by " + credit.artist);
    if (rec.crop_method) parts.push(rec.crop_method + " crop");
    cap.textContent = parts.join(" · ");
    if (credit.link) {
      cap.appendChild(document.createTextNode(" · "));
      cap.appendChild(P.el("a", { href: credit.link, rel: "noopener noreferrer nofollow", target: "_blank", text: "source" }));
    }
    if (rec.description) cap.appendChild(P.el("div", { class: "desc", text: rec.description }));
    // The profile card: the banner with the avatar circle over its lower left, as Discord lays them out.
    const card = document.getElementById("profile-card");
    if (rec.avatar_url && rec.banner_url) {
      // Only a new address is assigned: the same one again would start its load over (an empty image meanwhile).
      [["card-banner", rec.banner_url], ["card-avatar", rec.avatar_url]].forEach(function (pair) {
        const img = document.getElementById(pair[0]);
        const src = pair[1] + "?v=" + rec.id;
        if (img.getAttribute("src") !== src) img.src = src;
      });
      card.hidden = false;
    } else {
      card.hidden = true;
    }
  }

  function faceSvg(size, faces, crop, banner) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + size[0] + " " + size[1]);
    svg.setAttribute("class", "overlay");
    const add = function (tag, attrs) {
      const e = document.createElementNS(NS, tag);
      for (const k in attrs) e.setAttribute(k, attrs[k]);
      svg.appendChild(e);
      return e;
    };
    const sw = Math.max(2, size[0] / 200);
    (faces || []).forEach(function (f) {
      const b = f.bbox;
      add("rect", { x: b[0], y: b[1], width: b[2] - b[0], height: b[3] - b[1], fill: "none", stroke: "#39c5bb", "stroke-width": sw, class: "face-box" });
    });
    if (crop) {
      add("rect", { x: crop[0], y: crop[1], width: crop[2] - crop[0], height: crop[3] - crop[1], fill: "none", stroke: "#ff78c8", "stroke-width": sw, class: "crop-box" });
      add("ellipse", { cx: (crop[0] + crop[2]) / 2, cy: (crop[1] + crop[3]) / 2, rx: (crop[2] - crop[0]) / 2, ry: (crop[3] - crop[1]) / 2, fill: "none", stroke: "#ff78c8", "stroke-dasharray": sw * 3, "stroke-width": sw });
    }
    if (banner) {
      // The banner's 5:2 frame and, dashed, the avatar circle the profile card draws over its lower left
      // (80 px at x 16..96 of a 340-px card, 6-px ring, centred on the bottom edge: mikubot/banner.py).
      const w = banner[2] - banner[0];
      add("rect", { x: banner[0], y: banner[1], width: w, height: banner[3] - banner[1], fill: "none", stroke: "#f5b041", "stroke-width": sw, class: "banner-box" });
      add("circle", { cx: banner[0] + w * 56 / 340, cy: banner[3], r: w * 46 / 340, fill: "none", stroke: "#f5b041", "stroke-dasharray": sw * 3, "stroke-width": sw, class: "banner-circle" });
    }
    return svg;
  }

  function showCandidates(rec) {
    const box = document.getElementById("candidates");
    box.textContent = "";
    const sizes = {};
    (rec.events || []).forEach(function (e) { if (e.stage === "download" && e.detail && e.detail.size) sizes[e.detail.key] = e.detail.size; });
    const cands = rec.candidates || [];
    if (!cands.length) { box.appendChild(P.el("p", { class: "muted", text: "No candidates (the change ended before downloading)." })); return; }
    cands.forEach(function (c, i) {
      const chosen = c.key === rec.post_key;
      const card = P.el("figure", { class: "candidate" + (chosen ? " chosen" : "") + (c.skipped ? " skipped" : ""), "data-key": c.key });
      const size = c.size || sizes[c.key];
      const frame = P.el("div", { class: "frame" });
      if (chosen && rec.annotated_url) {
        // The server-drawn copy (faces, crop square, round area) of the chosen image, with the same
        // boxes drawn again on top from the record's numbers.
        frame.appendChild(P.el("img", { src: rec.annotated_url + "?v=" + rec.id, alt: "chosen candidate with faces and crop" }));
        if (size) frame.appendChild(faceSvg(size, c.faces, rec.crop_box, rec.banner_box));
      } else if (c.picture_url && size) {
        // Every other downloaded candidate: its thumbnail, with its faces drawn in source pixels on top.
        frame.appendChild(P.el("img", { src: c.picture_url, alt: "candidate " + (c.filename || c.key) + " with its faces" }));
        frame.appendChild(faceSvg(size, c.faces, chosen ? rec.crop_box : null, chosen ? rec.banner_box : null));
      } else if (c.picture_pruned && size) {
        // Its thumbnail was deleted (kept for the latest changes only): the faces on a blank of its shape.
        frame.classList.add("schematic", "pruned");
        const svg = faceSvg(size, c.faces, null);
        svg.classList.add("plain");
        frame.appendChild(svg);
        frame.appendChild(P.el("p", { class: "pruned-note", text: "Picture no longer kept: candidate thumbnails are kept for the latest changes only (MIKU_CANDIDATE_PICTURES_KEPT)." }));
      } else if (size) {
        frame.classList.add("schematic");
        const svg = faceSvg(size, c.faces, null);
        svg.classList.add("plain");
        frame.appendChild(svg);
      }
      card.appendChild(frame);
      const v = c.verification || {};
      const lines = [c.filename || c.key];
      if (v.method) lines.push(v.method + " " + (v.confidence !== undefined ? v.confidence.toFixed(2) : "") + (v.description ? " — " + v.description : ""));
      if (c.faces) lines.push(c.faces.length + " face(s)" + (c.detected_via ? " via " + c.detected_via : ""));
      if (c.skipped) lines.push("skipped: " + c.skipped);
      if (c.lost) lines.push("not chosen: " + c.lost);
      if (chosen) lines.push("chosen · " + rec.crop_method + " crop " + JSON.stringify(rec.crop_box));
      if (c.framing && c.framing.reason) lines.push(c.framing.reason);
      const cap = P.el("figcaption", {});
      lines.forEach(function (l) { cap.appendChild(P.el("div", { text: l })); });
      card.appendChild(cap);
      box.appendChild(card);
    });
  }

  async function load(id, replay) {
    const res = await P.api("GET", "/profile-picture/changes/" + id);
    if (!res.ok) { say(P.detail(res), "error"); return null; }
    const rec = res.body;
    if (replay) { reset(rec.id, rec.restored_from ? "restore" : "change"); (rec.events || []).forEach(onEvent); }
    ["candidates-title", "vram-title"].forEach(function (t) {
      document.getElementById(t).textContent = "— " + (rec.restored_from ? "restore" : "change") + " #" + rec.id;
    });
    showAvatar(rec);
    showCandidates(rec);
    window.drawVramChart(document.getElementById("vram-chart"), rec.vram_timeline);
    return rec;
  }

  function watch(id, kind) {
    reset(id, kind);
    say("Change #" + id + " running…", "info");
    P.follow(id, onEvent, async function (end) {
      const rec = await load(id, false);
      if (!rec) return;
      if (rec.status === "failed") say("Change #" + id + " failed: " + (rec.error || ""), "error");
      else say("Change #" + id + " finished: " + rec.status + ".", "ok");
      document.body.dataset.lastChange = String(id);
      const btn = document.getElementById("change-now");
      if (btn) btn.disabled = false;
    });
  }
  window.watchChange = watch;

  const form = document.getElementById("change-form");
  if (form) {
    form.addEventListener("submit", async function (e) {
      e.preventDefault();
      const btn = document.getElementById("change-now");
      btn.disabled = true;
      const body = {};
      const src = document.getElementById("source").value.trim();
      if (src) body.source = src;
      if (document.getElementById("dry-run").checked) body.dry_run = true;
      const res = await P.api("POST", "/profile-picture/change", { json: body });
      if (res.status === 202) { watch(res.body.change_id, "change"); return; }
      btn.disabled = false;
      if (res.status === 409 && res.body.running_change_id) {
        say("A change is already running (#" + res.body.running_change_id + "); following it.", "info");
        watch(res.body.running_change_id, res.body.kind);
      } else say(P.detail(res), "error");
    });
  }

  const upForm = document.getElementById("upload-form");
  if (upForm) {
    let uploadId = null;
    upForm.addEventListener("submit", async function (e) {
      e.preventDefault();
      const file = document.getElementById("upload-file").files[0];
      if (!file) return;
      const fd = new FormData();
      fd.append("file", file);
      say("Detecting faces in " + file.name + "…", "info");
      const res = await P.api("POST", "/profile-picture/upload", { form: fd });
      if (!res.ok) { say(P.detail(res), "error"); return; }
      const p = res.body;
      uploadId = p.upload_id;
      document.getElementById("upload-annotated").src = p.annotated_url;
      document.getElementById("upload-avatar").src = p.preview_url;
      document.getElementById("upload-info").textContent = p.faces.length + " face(s) · " + p.crop_method +
        " crop " + JSON.stringify(p.crop_box) + (p.notes.length ? " · " + p.notes.join("; ") : "");
      document.getElementById("upload-preview").hidden = false;
      say("Preview ready: apply it, or upload another image.", "ok");
    });
    document.getElementById("upload-apply").addEventListener("click", async function () {
      if (!uploadId) return;
      const res = await P.api("POST", "/profile-picture/upload/" + uploadId + "/apply");
      if (res.status === 202) watch(res.body.change_id, "change");
      else if (res.status === 409 && res.body.running_change_id) watch(res.body.running_change_id, res.body.kind);
      else say(P.detail(res), "error");
    });
  }

  if (root.dataset.running) watch(Number(root.dataset.running), "change");
  else if (root.dataset.latest) load(Number(root.dataset.latest), true);
})();
