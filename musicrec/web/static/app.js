// Like / skip without leaving the page: POST /events with fetch, then swap in a fresh
// "for you" fragment rendered by the server (/partials/session). Without this script the
// same buttons submit their form and the server redirects back (303).
// A song page opened from another site is not recorded by the server (a GET must not write
// state across sites); the page marks it with data-record-view and this script records the view.
(function () {
  "use strict";

  function postEvent(body) {
    return fetch("/events", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body)
    });
  }

  function setStatus(form, text) {
    var status = form.querySelector(".feedback-status");
    if (status) { status.textContent = text; }
  }

  async function refreshPanel() {
    var panel = document.getElementById("session-panel");
    if (!panel) { return; }
    var response = await fetch(panel.dataset.src, { credentials: "same-origin", headers: { "Accept": "text/html" } });
    if (!response.ok) { throw new Error("refresh failed: " + response.status); }
    var template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();  // server-rendered, every value escaped
    var fresh = template.content.querySelector("#session-panel");
    if (fresh) { panel.replaceWith(fresh); }
  }

  document.addEventListener("submit", async function (event) {
    var form = event.target;
    if (!form.matches || !form.matches("form[data-feedback]")) { return; }
    event.preventDefault();
    var type = event.submitter && event.submitter.value ? event.submitter.value : "like";
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    setStatus(form, type === "like" ? "Saving your like…" : "Saving your skip…");
    try {
      var response = await postEvent({ type: type, track_id: form.dataset.trackId, source: "song_page" });
      if (response.status !== 202) { throw new Error("event refused: " + response.status); }
      await refreshPanel();
      setStatus(form, type === "like" ? "Liked. Your recommendations have been updated."
                                      : "Skipped. Your recommendations have been updated.");
      form.dataset.last = type;
    } catch (err) {
      setStatus(form, "Could not save that just now. Please try again.");
    } finally {
      buttons.forEach(function (b) { b.disabled = false; });
    }
  });

  var view = document.querySelector("[data-record-view]");
  if (view) {
    postEvent({ type: "track_view", track_id: view.dataset.recordView, source: "song_page" })
      .then(function (response) { if (response.status === 202) { return refreshPanel(); } })
      .catch(function (err) { console.warn("could not record this view:", err); });
  }
})();
