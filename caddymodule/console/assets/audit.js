// Audit: the hash-chained audit trail, newest first, with filters, keyset
// paging, a live tail and server-side chain verification.
import { get, SessionEnded } from './api.js';
import { h, clear, message, time, textInputs, pager } from './dom.js';
import { verifyChain } from './verify.js';

const pageSize = 50;
const tailEvery = 2000;

export function mount(el) {
  const f = {
    ...textInputs({ event_type: 'event type', agent_id: 'agent ID', task_id: 'task ID' }),
    outcome: h('select', { name: 'outcome' }, h('option', { value: '' }, 'any outcome'),
      h('option', { value: 'success' }, 'success'), h('option', { value: 'denied' }, 'denied')),
    since: h('input', { type: 'datetime-local', name: 'since', title: 'since (UTC)' }),
    until: h('input', { type: 'datetime-local', name: 'until', title: 'until (UTC)' }),
  };
  const form = h('form', { class: 'filters', id: 'audit-filter' }, Object.values(f), h('button', { type: 'submit' }, 'Filter'));
  const tail = h('input', { type: 'checkbox', id: 'tail', checked: true });
  const status = h('p', { class: 'message', id: 'audit-status' });
  const chain = h('div', { id: 'chain' });
  const { el: pages, prev: newer, next: older, range } = pager('← Newer', 'Older →');
  const body = h('tbody', { id: 'audit-rows' });
  el.append(h('h2', null, 'Audit'), form,
    h('div', { class: 'toolbar' }, h('label', null, tail, ' live tail (every 2 s)'), ' ', chain),
    status, pages,
    h('table', { class: 'audit' },
      h('thead', null, h('tr', null, ['ID', 'Time', 'Event', 'Agent', 'Task', 'Outcome', 'Resource', 'Detail'].map((t) => h('th', null, t)))),
      body));

  let filters = {};
  let anchors = []; // before_id of each page above the current one
  let before = '';
  let newest = ''; // newest event ID shown, where the tail continues
  let shown = 0;
  let total = 0; // matching events, as of the last load plus the tail

  async function load() {
    try {
      const page = await get('/v1/audit/events', { ...filters, order: 'newest', limit: pageSize, before_id: before });
      const events = page.events || [];
      clear(body).append(...events.map(row));
      shown = events.length;
      newest = events.length ? events[0].id : newest;
      if (!before && !events.length) newest = '';
      total = page.total;
      range.textContent = `${total} event(s) match; showing ${events.length}`;
      newer.disabled = anchors.length === 0;
      older.disabled = events.length < pageSize;
      older.dataset.next = events.length ? events[events.length - 1].id : '';
      if (!events.length) body.append(h('tr', null, h('td', { colspan: 8, class: 'empty' }, 'No events match.')));
    } catch (e) {
      if (!(e instanceof SessionEnded)) message(status, `Loading events failed: ${e.message}`, true);
    }
  }

  // poll fetches events after the newest shown, oldest first, and puts
  // them on top; only on the first page, where the newest events are.
  async function poll() {
    if (!tail.checked || before) return;
    if (!newest) { load(); return; }
    try {
      const page = await get('/v1/audit/events', { ...filters, after_id: newest, limit: 1000 });
      const events = page.events || [];
      if (!events.length) return;
      if (!shown) clear(body);
      for (const e of events) {
        const r = row(e);
        r.classList.add('fresh');
        body.insertBefore(r, body.firstChild);
      }
      shown += events.length;
      while (body.children.length > pageSize * 4) body.removeChild(body.lastChild);
      newest = events[events.length - 1].id;
      total += events.length;
      range.textContent = `${total} event(s) match; showing the newest ${body.children.length}`;
      message(status, `${events.length} new event(s) at ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (!(e instanceof SessionEnded)) message(status, `Live tail failed: ${e.message}`, true);
    }
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    filters = {
      event_type: f.event_type.value.trim(), agent_id: f.agent_id.value.trim(), task_id: f.task_id.value.trim(),
      outcome: f.outcome.value, since: utc(f.since.value), until: utc(f.until.value),
    };
    anchors = [];
    before = '';
    newest = '';
    load();
  });
  older.addEventListener('click', () => {
    if (!older.dataset.next) return;
    anchors.push(before);
    before = older.dataset.next;
    load();
  });
  newer.addEventListener('click', () => {
    before = anchors.pop() || '';
    load();
  });
  verifyChain(chain);
  load();
  const timer = setInterval(poll, tailEvery);
  return () => clearInterval(timer);
}

// utc reads a datetime-local value as UTC and returns RFC 3339.
function utc(v) {
  return v ? `${v.length === 16 ? `${v}:00` : v}Z` : '';
}

function row(e) {
  return h('tr', { 'data-event-id': e.id, class: e.outcome === 'denied' ? 'denied' : '' },
    h('td', null, h('code', null, e.id)), h('td', null, time(e.timestamp)), h('td', null, e.event_type),
    h('td', null, e.agent_id || ''), h('td', null, e.task_id || ''), h('td', null, e.outcome || ''),
    h('td', null, e.resource || ''), h('td', { class: 'detail' }, e.detail || ''));
}

