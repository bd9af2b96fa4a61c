"use strict";
// The page is complete as served; this only refreshes its body every 2 s, keeping the
// model, metric and axis chosen in the address.
async function refresh() {
  try {
    const r = await fetch("/fragment" + location.search);
    if (r.ok) document.getElementById("main").innerHTML = await r.text();
  } catch (e) {
    const p = document.querySelector("#main .muted");
    if (p) p.textContent = "server unreachable: " + e;
  }
}
setInterval(refresh, 2000);
