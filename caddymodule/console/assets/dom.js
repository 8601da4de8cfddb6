// DOM helpers. Every string reaches the page through textContent or an
// attribute set by setAttribute: data from the broker (agent IDs, task
// IDs, audit details) is agent-supplied and never parsed as HTML.

// h creates an element: h('td', {class: 'x'}, 'text', child, ...).
// Attributes whose name starts with "on" are refused: handlers are bound
// with addEventListener by the caller, never from strings.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.toLowerCase().startsWith('on')) throw new Error('h: event attributes are not allowed');
    el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

// clear empties an element.
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// svg creates an SVG element with attributes.
export function svg(tag, attrs) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// time formats an RFC 3339 time for display, or "—".
export function time(s) {
  if (!s) return '—';
  const d = new Date(s);
  return Number.isNaN(d.getTime()) ? String(s) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

// table builds a table from column headings and rows of cells.
export function table(headings, rows, attrs) {
  return h('table', attrs,
    h('thead', null, h('tr', null, headings.map((t) => h('th', null, t)))),
    h('tbody', null, rows));
}

// message shows text in a status line, as an error when err is set.
export function message(el, text, err) {
  el.textContent = text || '';
  el.className = err ? 'message error' : 'message';
}

// textInputs makes one text input per name, keyed by it: {name: placeholder}.
export function textInputs(fields) {
  return Object.fromEntries(Object.entries(fields).map(([name, placeholder]) =>
    [name, h('input', { type: 'text', name, placeholder })]));
}

// pager makes back and forward buttons around a range label.
export function pager(back = '← Previous', forward = 'Next →') {
  const prev = h('button', { type: 'button' }, back);
  const next = h('button', { type: 'button' }, forward);
  const range = h('span', { class: 'range' });
  return { el: h('div', { class: 'pager' }, prev, range, next), prev, next, range };
}
