// History: restore an earlier avatar, follow the restore to its end, then refresh the gallery.
"use strict";
(function () {
  const P = window.panel;
  const message = document.getElementById("message");
  function say(text, kind) { message.textContent = text; message.className = "message " + (kind || ""); }
  document.querySelectorAll("button.restore").forEach(function (btn) {
    btn.addEventListener("click", async function () {
      const id = btn.dataset.id;
      document.querySelectorAll("button.restore").forEach(function (b) { b.disabled = true; });
      const res = await P.api("POST", "/profile-picture/restore/" + id);
      if (res.status !== 202) {
        document.querySelectorAll("button.restore").forEach(function (b) { b.disabled = false; });
        say(res.status === 409 ? P.detail(res) + " (change #" + res.body.running_change_id + ")" : P.detail(res), "error");
        return;
      }
      const newId = res.body.change_id;
      say("Restoring the avatar of #" + id + " as change #" + newId + "…", "info");
      P.follow(newId, function (ev) { if (ev.status === "fail") say("Restore failed: " + (ev.detail.error || ""), "error"); },
        function (end) {
          say("Restored #" + id + " as change #" + newId + ": " + (end ? end.status : "?") + ".", end && end.status !== "failed" ? "ok" : "error");
          setTimeout(function () { window.location.reload(); }, 600);
        });
    });
  });
})();
