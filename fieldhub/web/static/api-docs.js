"use strict";
// /api/v1/docs: Swagger UI (vendored from npm by scripts/setup) renders the OpenAPI document.
// Configured here, not inline, so the page keeps the app's strict Content-Security-Policy.
(() => {
  const root = document.getElementById("api-docs");
  if (!root || !window.SwaggerUIBundle) return;
  window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    // No badge from the public validator: the page talks to this server only.
    validatorUrl: null,
    defaultModelsExpandDepth: 0,
  });
})();
