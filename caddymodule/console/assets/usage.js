// Usage: per agent, app or launch-token template, what was granted against
// what the gateway saw used, never-used grants, the suggested narrower
// grant, and the scopes asked for and denied.
import { get, SessionEnded } from './api.js';
import { h, clear, table, message, time, pager } from './dom.js';

const pageSize = 20;

export function mount(el) {
  const groupBy = h('select', { name: 'group_by', id: 'group-by' },
    h('option', { value: 'agent' }, 'per agent'), h('option', { value: 'app' }, 'per app'),
    h('option', { value: 'launch_token' }, 'per launch token'));
  const unused = h('input', { type: 'checkbox', name: 'unused' });
  const form = h('form', { class: 'filters', id: 'usage-filter' }, groupBy,
    h('label', null, unused, ' only groups with never-used grants'), h('button', { type: 'submit' }, 'Show'));
  const status = h('p', { class: 'message', id: 'usage-status' });
  const list = h('div', { id: 'usage-list' });
  const { el: pages, prev, next, range } = pager();
  el.append(h('h2', null, 'Usage'), form, status, pages, list);
  let offset = 0;

  async function load() {
    try {
      const rep = await get('/v1/admin/usage', {
        group_by: groupBy.value, unused: unused.checked ? 'true' : '', limit: pageSize, offset,
      });
      const groups = rep.groups || [];
      clear(list).append(...(groups.length ? groups.map(group) : [h('p', { class: 'empty' }, 'No usage recorded yet.')]));
      const end = offset + groups.length;
      range.textContent = rep.total ? `${offset + 1}–${end} of ${rep.total}` : '';
      prev.disabled = offset === 0;
      next.disabled = end >= rep.total;
    } catch (e) {
      if (!(e instanceof SessionEnded)) message(status, `Usage failed: ${e.message}`, true);
    }
  }

  form.addEventListener('submit', (ev) => { ev.preventDefault(); offset = 0; load(); });
  prev.addEventListener('click', () => { offset = Math.max(0, offset - pageSize); load(); });
  next.addEventListener('click', () => { offset += pageSize; load(); });
  load();
  const timer = setInterval(load, 10000);
  return () => clearInterval(timer);
}

function group(g) {
  const who = [g.name && `name ${g.name}`, g.app_id && `app ${g.app_id}`, g.orch_id && `orch ${g.orch_id}`,
    g.task_id && `task ${g.task_id}`, g.agents && `${g.agents} agent(s)`].filter(Boolean).join(' · ');
  const grants = (g.grants || []).map((u) => h('tr', { class: u.used ? 'used' : 'unused' },
    h('td', null, h('code', null, u.scope)),
    h('td', null, u.used ? 'used' : h('span', { class: 'badge' }, 'never used')),
    h('td', { class: 'num' }, u.count), h('td', null, time(u.last_used)),
    h('td', null, (u.identifiers || []).join(', ')), h('td', { class: 'num' }, u.would_allow || '')));
  const denied = (asks, title) => (asks && asks.length ? [h('h4', null, title),
    table(['Asked for', 'Times', 'Last seen', 'Held instead'], asks.map((d) => h('tr', null,
      h('td', null, h('code', null, d.required)), h('td', { class: 'num' }, d.count), h('td', null, time(d.last_seen)),
      h('td', null, (d.holds || []).join(' ')))))] : []);
  return h('section', { class: 'usage-group', 'data-group-id': g.id },
    h('h3', null, `${g.kind} `, h('code', null, g.id)), who ? h('p', { class: 'who' }, who) : null,
    table(['Granted', 'Use', 'Count', 'Last used', 'Identifiers', 'Would allow'], grants),
    h('p', { class: 'suggested' }, 'Suggested grant: ', h('code', null, (g.suggested || []).join(' ') || '(nothing used)')),
    denied(g.denied, 'Denied asks'), denied(g.would_deny, 'Would be denied (report mode)'));
}
