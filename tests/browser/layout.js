// Boxes of the visible controls and texts of the page, searched through Bokeh's shadow roots, measured
// against the viewport and the container they belong to (the sidebar, the image column or the tabs).
// Returns a list of problems (empty: the layout is sound). Scrolls elements into view to check reach.
(containers) => {
  const all = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      all.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  const parent = (e) => e.parentElement || (e.getRootNode() && e.getRootNode().host);
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) return false;
    for (let e = el; e; e = parent(e)) {
      const st = getComputedStyle(e);
      if (st.display === "none" || st.visibility === "hidden" || st.opacity === "0") return false;
    }
    return true;
  };
  const boxes = {};
  for (const [name, selector] of Object.entries(containers)) {
    const el = all.find((e) => e.matches && e.matches(selector) && visible(e));
    if (el) boxes[name] = el.getBoundingClientRect();
  }
  const inside = (r) => Object.entries(boxes).find(([, b]) => r.left >= b.left - 1 && r.right <= b.right + 1
                                                   && r.top >= b.top - 1) || null;
  const owner = (r) => Object.entries(boxes).find(([, b]) => r.left + r.width / 2 >= b.left
                                                  && r.left + r.width / 2 <= b.right
                                                  && r.top >= b.top - 1 && r.top <= b.bottom) || null;
  const controls = all.filter((e) => e.matches && e.matches(
      "button, select, input:not([type=file]):not([type=hidden]), .noUi-handle, .bk-Canvas, .bk-btn") && visible(e));
  const texts = all.filter((e) => e.matches && e.matches("p, label, h1, h2, h3, th, td, .bk-btn, select, li")
                           && visible(e) && e.textContent.trim());
  const problems = [];
  const vw = document.documentElement.clientWidth, vh = window.innerHeight;
  const describe = (e) => `${e.tagName.toLowerCase()}${e.className && typeof e.className === "string"
      ? "." + e.className.trim().split(/\s+/).join(".") : ""} "${(e.textContent || e.value || "").trim().slice(0, 40)}"`;
  for (const e of controls) {
    e.scrollIntoView({block: "nearest", inline: "nearest"});
    const r = e.getBoundingClientRect();
    if (r.left < -1 || r.right > vw + 1) problems.push(`off screen horizontally (${Math.round(r.left)}..${Math.round(r.right)} of ${vw}): ${describe(e)}`);
    else if (r.top < -1 || r.bottom > vh + 1) problems.push(`not reachable by scrolling (${Math.round(r.top)}..${Math.round(r.bottom)} of ${vh}): ${describe(e)}`);
    else if (owner(r) && !inside(r)) problems.push(`sticks out of ${owner(r)[0]}: ${describe(e)}`);
  }
  const canvas = document.createElement("canvas").getContext("2d");
  const scroller = (el) => {   // the nearest box that scrolls sideways now (a wide table): its text is reachable
    for (let e = parent(el); e && e !== document.body && e !== document.documentElement; e = parent(e)) {
      if (["auto", "scroll"].includes(getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth + 1) return e;
    }
    return null;
  };
  const cut = (r) => r.right > vw + 1 || (owner(r) && !inside(r));
  for (const e of texts) {
    const st = getComputedStyle(e);
    const r = e.getBoundingClientRect();
    const box = cut(r) && scroller(e);
    if (cut(r) && (!box || cut(box.getBoundingClientRect()))) problems.push(`text cut off at the side: ${describe(e)}`);
    if (e.tagName === "SELECT") {
      const option = e.options[e.selectedIndex];
      if (!option) continue;
      canvas.font = `${st.fontWeight} ${st.fontSize} ${st.fontFamily}`;
      const room = e.clientWidth - parseFloat(st.paddingLeft) - parseFloat(st.paddingRight);
      if (canvas.measureText(option.text).width > room + 1) problems.push(`select text clipped: ${describe(option)}`);
    } else if (e.scrollWidth > e.clientWidth + 1 && ["hidden", "clip"].includes(st.overflowX)) {
      problems.push(`text clipped (${e.scrollWidth} > ${e.clientWidth}): ${describe(e)}`);
    }
  }
  window.scrollTo(0, 0);
  for (const e of all) if (e.scrollTop) e.scrollTop = 0;
  return problems;
}
