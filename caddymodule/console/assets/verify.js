// Server-side verification of the audit hash chain.
import { get, SessionEnded } from './api.js';
import { h, clear } from './dom.js';

// verifyChain renders a Verify button and the last result into el, and
// runs a verification at once.
export function verifyChain(el) {
  const out = h('span', { class: 'verify-result', id: 'verify-result' }, 'not verified yet');
  const button = h('button', { type: 'button', id: 'verify' }, 'Verify chain');
  clear(el).append(button, ' ', out);
  async function run() {
    button.disabled = true;
    out.textContent = 'verifying…';
    out.className = 'verify-result';
    try {
      const v = await get('/v1/admin/audit/verify');
      if (v.intact) {
        out.textContent = `intact: ${v.verified} events verified, head ${v.head_id || '(empty)'} ${v.head_hash}`;
        out.className = 'verify-result ok';
      } else {
        const b = v.broken || {};
        out.textContent = `BROKEN at event ${b.id} (position ${b.index}): ${b.reason}; ${v.verified} events verified before it`;
        out.className = 'verify-result bad';
      }
    } catch (e) {
      if (!(e instanceof SessionEnded)) {
        out.textContent = `verification failed: ${e.message}`;
        out.className = 'verify-result bad';
      }
    } finally {
      button.disabled = false;
    }
  }
  button.addEventListener('click', run);
  run();
}
