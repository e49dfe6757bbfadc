// The card page: Stripe.js Elements collects the card and confirms the SetupIntent with
// Stripe; our server then re-reads the SetupIntent from Stripe before saving anything.
(function () {
  "use strict";
  const form = document.getElementById("card-form");
  if (!form || typeof Stripe === "undefined") return;
  const stripe = Stripe(form.dataset.stripeKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const error = form.querySelector("[data-error]");
  const button = form.querySelector("[data-submit]");

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    button.disabled = true;
    const result = await stripe.confirmCardSetup(form.dataset.clientSecret, {
      payment_method: { card: card },
    });
    if (result.error) {
      error.textContent = result.error.message || "The card could not be saved.";
      button.disabled = false;
      return;
    }
    form.querySelector("input[name=setup_intent]").value = result.setupIntent.id;
    form.submit();
  });
})();
