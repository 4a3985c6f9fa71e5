/* BotArmy HITL: what a reviewer typed in a decision panel, kept in the tab's sessionStorage under
 * "hitl-draft:<user id>:<page>#<field>" (review/static/review/live.js saves and restores it).
 * Loaded by the reviewer pages and by the admin, whose Log out ends them too: signing out (the
 * pages' form.logout, the admin's #logout-form) drops every draft of the tab.
 */
(function () {
  "use strict";

  var PREFIX = "hitl-draft:";

  function store() {
    try { return window.sessionStorage; } catch (e) { return null; }  // storage turned off: no drafts
  }

  function drop(keep) {  // every draft of this tab, but those whose key ``keep`` accepts
    var kept = store();
    if (!kept) return;
    for (var i = kept.length - 1; i >= 0; i--) {
      var key = kept.key(i);
      if (key && key.indexOf(PREFIX) === 0 && !(keep && keep(key))) kept.removeItem(key);
    }
  }

  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (form && form.matches && (form.matches("form.logout") || form.id === "logout-form")) drop(null);
  });

  window.hitlDrafts = { PREFIX: PREFIX, store: store, drop: drop };
})();
