// The page's texts in the browser's language: the server puts the catalog entries app.js
// uses into <script id="texts"> (see adapters/web/page.py). gettext/ngettext are the names
// Babel extracts; placeholders are Python's %(name)s / %(name)d, as in the .po files.
// Plural forms are chosen with the browser's own CLDR rules (Intl.PluralRules), keyed by
// the category names the server mapped each catalog form to.
"use strict";

(() => {
  let data = { lang: "en", messages: {}, plurals: {} };
  try {
    data = { ...data, ...JSON.parse(document.getElementById("texts").textContent) };
  } catch (err) {
    console.warn("no page texts; showing English", err);
  }
  let rules = null;
  try {
    rules = new Intl.PluralRules(data.lang);
  } catch {
    rules = new Intl.PluralRules("en");
  }

  function format(text, values) {
    if (!values) return text;
    return text.replace(/%\((\w+)\)[sd]/g, (whole, name) =>
      name in values ? String(values[name]) : whole,
    );
  }

  window.gettext = (message, values) => format(data.messages[message] || message, values);

  window.ngettext = (singular, plural, n, values) => {
    const forms = data.plurals[singular];
    const form = forms && (forms[rules.select(n)] || forms.other);
    return format(form || (n === 1 ? singular : plural), { n, ...values });
  };
})();
