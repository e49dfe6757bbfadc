// The invoice page when the bank wants 3-D Secure: Stripe.js runs the authentication,
// then the page asks our server to re-read the payment from Stripe.
(function () {
  "use strict";
  const box = document.getElementById("authenticate");
  if (!box || typeof Stripe === "undefined") return;
  const stripe = Stripe(box.dataset.stripeKey);
  const button = box.querySelector("[data-authenticate]");
  const error = box.querySelector("[data-error]");
  button.addEventListener("click", async () => {
    button.disabled = true;
    error.textContent = "";
    const result = await stripe.confirmCardPayment(box.dataset.clientSecret);
    if (result.error) {
      error.textContent = result.error.message || "Authentication failed.";
      button.disabled = false;
    }
    document.querySelector("[data-refresh-form]").submit();
  });
})();
