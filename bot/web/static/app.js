// A little help on top of pages that work without it: copy buttons, confirm before delete, stars in place.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  input.select();
  navigator.clipboard?.writeText(input.value).then(() => { button.textContent = "Copied"; }, () => {});
});
document.addEventListener("submit", async (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
  if (!form.classList.contains("like")) return;
  event.preventDefault();
  const response = await fetch(form.action, { method: "POST", body: new FormData(form), headers: { Accept: "application/json" } });
  if (!response.ok) { form.submit(); return; }
  const { liked } = await response.json();
  const button = form.querySelector("button");
  const count = form.querySelector(".count");
  const was = button.getAttribute("aria-pressed") === "true";
  button.setAttribute("aria-pressed", String(liked));
  button.textContent = liked ? "⭐ Starred" : "☆ Star";
  if (count && was !== liked) count.textContent = String(Number(count.textContent) + (liked ? 1 : -1));
});
