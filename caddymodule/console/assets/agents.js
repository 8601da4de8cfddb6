// Agents: the registered agents with their live tokens, filters, paging,
// and revocation at every level.
import { get, call, SessionEnded } from './api.js';
import { h, clear, table, message, time, textInputs, pager } from './dom.js';
import { confirmAction } from './confirm.js';

const pageSize = 50;

export function mount(el) {
  const f = {
    ...textInputs({ q: 'agent ID contains', task_id: 'task ID', orch_id: 'orchestrator ID', app_id: 'app ID' }),
    all: h('input', { type: 'checkbox', name: 'all' }),
  };
  const form = h('form', { class: 'filters', id: 'agents-filter' },
    f.q, f.task_id, f.orch_id, f.app_id, h('label', null, f.all, ' include agents without live tokens'),
    h('button', { type: 'submit' }, 'Filter'));
  const status = h('p', { class: 'message', id: 'agents-status' });
  const list = h('div', { id: 'agents-list' });
  const { el: pages, prev, next, range } = pager();
  el.append(h('h2', null, 'Agents'), form, status, pages, list);

  let offset = 0;
  let total = 0;
  let filters = {};

  async function load() {
    try {
      const page = await get('/v1/admin/agents', { ...filters, limit: pageSize, offset });
      total = page.total;
      render(page.agents || []);
      const end = offset + (page.agents || []).length;
      range.textContent = total ? `${offset + 1}–${end} of ${total}` : 'no agents';
      prev.disabled = offset === 0;
      next.disabled = end >= total;
    } catch (e) {
      if (!(e instanceof SessionEnded)) message(status, `Listing agents failed: ${e.message}`, true);
    }
  }

  function render(agents) {
    const rows = agents.map((a) => {
      const tokens = a.tokens || [];
      const actions = h('td', { class: 'actions' });
      const revokeAgent = h('button', { type: 'button', class: 'danger', 'data-action': 'revoke-agent' }, 'Revoke agent');
      revokeAgent.addEventListener('click', () => revoke('agent', a.agent_id,
        `Revoke agent ${a.agent_id}: its ${tokens.length} live token(s) stop working, and it can get no new ones.`));
      actions.append(revokeAgent);
      if (a.task_id) {
        const revokeTask = h('button', { type: 'button', class: 'danger', 'data-action': 'revoke-task' }, 'Revoke task');
        revokeTask.addEventListener('click', () => revokeTaskOf(a.task_id));
        actions.append(' ', revokeTask);
      }
      const tokenList = h('ul', { class: 'tokens' }, tokens.map((t) => {
        const li = h('li', null, h('code', null, t.jti), ` until ${time(t.expires_at)}`,
          t.delegation_depth ? ` (delegated, depth ${t.delegation_depth})` : '', ' ');
        const rt = h('button', { type: 'button', class: 'small danger', 'data-action': 'revoke-token' }, 'Revoke token');
        rt.addEventListener('click', () => revoke('token', t.jti, `Revoke token ${t.jti} of agent ${a.agent_id}: this one token stops working.`));
        li.append(rt);
        if (t.chain_root) {
          const rc = h('button', { type: 'button', class: 'small danger', 'data-action': 'revoke-chain' }, 'Revoke chain');
          rc.addEventListener('click', () => revoke('chain', t.chain_root,
            `Revoke the delegation chain rooted at ${t.chain_root}: every token delegated from it stops working.`));
          li.append(' ', rc);
        }
        return li;
      }));
      return h('tr', { 'data-agent-id': a.agent_id },
        h('td', null, h('code', null, a.agent_id)),
        h('td', null, a.orch_id), h('td', null, a.task_id), h('td', null, a.app_id || '—'),
        h('td', null, (a.scope || []).join(' ')), h('td', null, time(a.registered_at)),
        h('td', null, tokens.length ? tokenList : 'none live'), actions);
    });
    clear(list).append(agents.length
      ? table(['Agent', 'Orchestrator', 'Task', 'App', 'Scope', 'Registered', 'Live tokens', ''], rows, { class: 'agents' })
      : h('p', { class: 'empty' }, 'No agents match.'));
  }

  async function revokeTaskOf(task) {
    let n = '?';
    try {
      n = (await get('/v1/admin/agents', { task_id: task, limit: 1 })).total;
    } catch (e) {
      if (e instanceof SessionEnded) return;
    }
    revoke('task', task, `Revoke task ${task}: ${n} live agent(s) lose every token issued for it.`);
  }

  async function revoke(level, target, text) {
    if (!(await confirmAction(text, `Revoke ${level}`))) return;
    try {
      const r = await call('POST', '/v1/revoke', { level, target });
      message(status, `Revoked ${r.level} ${r.target} (count ${r.count}).`);
    } catch (e) {
      if (e instanceof SessionEnded) return;
      message(status, `Revocation failed: ${e.message}`, true);
    }
    load();
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    filters = {
      q: f.q.value.trim(), task_id: f.task_id.value.trim(), orch_id: f.orch_id.value.trim(),
      app_id: f.app_id.value.trim(), live: f.all.checked ? 'false' : '',
    };
    offset = 0;
    load();
  });
  prev.addEventListener('click', () => { offset = Math.max(0, offset - pageSize); load(); });
  next.addEventListener('click', () => { offset += pageSize; load(); });
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
