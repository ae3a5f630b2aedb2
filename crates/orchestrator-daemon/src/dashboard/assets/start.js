// The orch dashboard, its start: login or the first view. Served as one script after app.js
// (dashboard/mod.rs concatenates the files), so it shares app.js's scope
// and strict mode.

// ---------- start ----------

function start() {
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  followEvents();
  render();
}

async function boot() {
  document.getElementById("logout").addEventListener("click", logOutEverywhere);
  const m = location.hash.match(/ticket=([^&]+)/);
  if (m) {
    // The ticket works once; it leaves the address bar at once.
    history.replaceState(null, "", location.pathname + "#/");
    try {
      state.token = await redeemTicket(decodeURIComponent(m[1]));
      sessionStorage.setItem(TOKEN_KEY, state.token);
    } catch (e) {
      return showLogin(e.message);
    }
  }
  if (!state.token) return showLogin();
  start();
}

boot();

