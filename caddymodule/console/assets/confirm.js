// A confirmation dialog that names what an action will end.
const dialog = () => document.getElementById('confirm');

// confirmAction resolves true when the operator confirms text.
export function confirmAction(text, action) {
  const d = dialog();
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = action || 'Confirm';
  d.returnValue = '';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.showModal();
  });
}
