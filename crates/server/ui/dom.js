// Small DOM helpers: elements are built with h(), never from HTML strings, so a value from
// a record can never become markup.

/** Builds an element: h('a', {href: '#/'}, 'text', child, [more children]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
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

/** Replaces the children of `el`. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A link inside the app. */
export function link(route, text, attrs = {}) {
  return h('a', { href: '#' + route, ...attrs }, text);
}

export function recordRoute(collection, id, deleted) {
  return `/c/${encodeURIComponent(collection)}/${encodeURIComponent(id)}` + (deleted ? '?deleted=1' : '');
}

/** "3 minutes ago" style, with the exact instant in a title. */
export function when(iso) {
  if (!iso) return '—';
  const t = new Date(iso);
  return h('time', { datetime: iso, title: t.toISOString() }, relative(t.getTime() - Date.now()));
}

export function relative(ms) {
  const past = ms < 0;
  const s = Math.abs(ms) / 1000;
  let text;
  if (s < 60) text = `${Math.round(s)} s`;
  else if (s < 3600) text = `${Math.round(s / 60)} min`;
  else if (s < 86400 * 2) text = `${Math.round(s / 3600)} h`;
  else text = `${Math.round(s / 86400)} days`;
  return past ? `${text} ago` : `in ${text}`;
}

/** Time left before an instant, in words; `soon` when under 3 days. */
export function timeLeft(iso) {
  if (!iso) return { text: 'not scheduled', soon: false };
  const ms = new Date(iso).getTime() - Date.now();
  if (ms <= 0) return { text: 'due now', soon: true };
  return { text: relative(ms).replace(/^in /, '') + ' left', soon: ms < 3 * 86400 * 1000 };
}

export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many || one + 's'}`;
}

/** A value of a record field, shown as text. */
export function show(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** A labelled form field: label + control, tied by id. */
let uid = 0;
export function field(label, control, hint) {
  const id = control.id || `f${++uid}`;
  control.id = id;
  const hintEl = hint ? h('span', { class: 'hint', id: id + '-hint' }, hint) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, hintEl);
}

/** A button that needs a scope the key lacks: disabled, saying which. */
export function scopedButton(allowed, scope, text, attrs) {
  if (allowed) return h('button', { type: 'button', ...attrs }, text);
  return h('button', { type: 'button', disabled: true, title: `needs the ${scope} scope`, class: attrs && attrs.class },
    `${text} (needs ${scope})`);
}
