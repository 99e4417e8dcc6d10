// Live progress: every element with data-progress-url polls it every 2 s and shows the
// audit's status, progress and ETA; on the audit's own page the end reloads the results.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function show(box, state) {
    var bar = box.querySelector("progress");
    var text = box.querySelector("[data-role=text]");
    var eta = box.querySelector("[data-role=eta]");
    bar.max = Math.max(state.total, 1);
    bar.value = state.done;
    text.textContent = state.done + " / " + state.total + (state.stage ? " · " + state.stage : "");
    eta.textContent = state.eta_seconds === null ? "" : "ETA " + Math.round(state.eta_seconds) + " s";
    var row = box.closest("[data-audit-id]") || document;
    var badge = row.querySelector("[data-role=status]");
    if (badge) {
      badge.textContent = state.status;
      badge.className = "badge status-" + state.status;
    }
  }

  function follow(box) {
    var url = box.getAttribute("data-progress-url");
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 401) { window.location.reload(); throw new Error("signed out"); }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (state) {
          show(box, state);
          box.setAttribute("data-status", state.status);
          if (state.terminal) {
            if (box.closest("#live")) { window.location.reload(); }
            return;
          }
          window.setTimeout(tick, PERIOD_MS);
        })
        .catch(function () { window.setTimeout(tick, PERIOD_MS * 2); });
    }
    window.setTimeout(tick, PERIOD_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-progress-url]").forEach(follow);
  });
})();
