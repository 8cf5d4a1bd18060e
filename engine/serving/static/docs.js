// Renders /openapi.json as a readable page: operations by tag, parameters, bodies, responses.
"use strict";
(function () {
  const state = { operations: 0, error: null };
  window.rankly_docs = state;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => { if (k === "text") node.textContent = v; else node.setAttribute(k, v); });
    (children || []).forEach(c => node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return node;
  }

  // Follow "#/components/..." references (documents never point outside themselves).
  function resolve(doc, schema, seen) {
    if (!schema || !schema.$ref) return schema;
    if ((seen = seen || new Set()).has(schema.$ref)) return { description: schema.$ref };
    seen.add(schema.$ref);
    const target = schema.$ref.replace(/^#\//, "").split("/").reduce((o, k) => o && o[k], doc);
    return resolve(doc, target, seen);
  }

  // One line per constraint: type, bounds, lengths, pattern, enum, required, nullable.
  function describe(doc, schema) {
    schema = resolve(doc, schema) || {};
    const out = [];
    if (schema.type) out.push(schema.type + (schema.type === "array" && schema.items ? " of " + describe(doc, schema.items) : ""));
    if (schema.oneOf || schema.anyOf) out.push("one of: " + (schema.oneOf || schema.anyOf).map(s => describe(doc, s) || "{…}").join(" | "));
    if (schema.enum) out.push("one of " + schema.enum.map(v => JSON.stringify(v)).join(", "));
    if (schema.minimum !== undefined) out.push((schema.exclusiveMinimum ? "> " : ">= ") + schema.minimum);
    if (schema.maximum !== undefined) out.push((schema.exclusiveMaximum ? "< " : "<= ") + schema.maximum);
    if (schema.minLength !== undefined || schema.maxLength !== undefined)
      out.push("length " + (schema.minLength || 0) + ".." + (schema.maxLength === undefined ? "" : schema.maxLength));
    if (schema.maxItems !== undefined) out.push("at most " + schema.maxItems + " items");
    if (schema.minItems) out.push("at least " + schema.minItems + " items");
    if (schema.maxProperties !== undefined) out.push("at most " + schema.maxProperties + " keys");
    if (schema.pattern) out.push("pattern " + schema.pattern);
    if (schema.default !== undefined) out.push("default " + JSON.stringify(schema.default));
    if (schema.nullable) out.push("or null");
    return out.join(", ");
  }

  function fieldsTable(doc, schema) {
    schema = resolve(doc, schema) || {};
    const rows = [el("tr", {}, [el("th", { text: "field" }), el("th", { text: "schema" }), el("th", { text: "notes" })])];
    const required = new Set(schema.required || []);
    Object.entries(schema.properties || {}).forEach(([name, sub]) => {
      const r = resolve(doc, sub) || {};
      rows.push(el("tr", {}, [el("td", {}, [el("code", { text: name + (required.has(name) ? " *" : "") })]),
        el("td", { text: describe(doc, r) }), el("td", { text: r.description || "" })]));
    });
    const notes = [];
    if (schema.additionalProperties === false) notes.push("other fields are refused (422)");
    if (schema.anyOf && schema.anyOf.every(s => s.required)) notes.push("needs one of: " + schema.anyOf.map(s => s.required.join("+")).join(" or "));
    if (schema.description) notes.push(schema.description);
    const box = el("div", {}, notes.map(n => el("div", { text: n })));
    if (rows.length > 1) box.appendChild(el("table", {}, rows));
    else if (!notes.length) box.appendChild(el("div", { text: describe(doc, schema) || "any JSON" }));
    return box;
  }

  function operation(doc, path, method, op) {
    const head = el("h3", {}, [el("span", { class: "method " + method, text: method.toUpperCase() }), path]);
    if (op.security && op.security.length) head.appendChild(el("span", { class: "admin", text: "admin: Authorization: Bearer <token> or X-API-Key" }));
    const box = el("section", { class: "op", id: op.operationId || method + path }, [head, el("div", { text: op.summary || "" })]);
    if (op.description) box.appendChild(el("div", { text: op.description }));
    const params = (op.parameters || []).map(p => resolve(doc, p));
    if (params.length) {
      const rows = [el("tr", {}, ["parameter", "in", "schema", "notes"].map(t => el("th", { text: t })))];
      params.forEach(p => rows.push(el("tr", {}, [el("td", {}, [el("code", { text: p.name + (p.required ? " *" : "") })]),
        el("td", { text: p.in + (p.explode ? " (repeat it)" : "") }), el("td", { text: describe(doc, p.schema) }),
        el("td", { text: (resolve(doc, p.schema) || {}).description || "" })])));
      box.appendChild(el("table", {}, rows));
    }
    const body = op.requestBody && op.requestBody.content;
    if (body) {
      Object.entries(body).forEach(([type, media]) => {
        box.appendChild(el("div", {}, [el("b", { text: "body " }), el("code", { text: type })]));
        const schema = resolve(doc, media.schema) || {};
        (schema.oneOf || [schema]).forEach(s => box.appendChild(fieldsTable(doc, s)));
      });
    }
    const rows = [el("tr", {}, [el("th", { text: "status" }), el("th", { text: "meaning" })])];
    Object.entries(op.responses || {}).sort().forEach(([code, r]) => {
      r = resolve(doc, r);
      rows.push(el("tr", {}, [el("td", {}, [el("code", { text: code })]), el("td", { text: r.description || "" })]));
    });
    box.appendChild(el("table", {}, rows));
    state.operations += 1;
    return box;
  }

  function render(doc) {
    document.getElementById("version").textContent = doc.info.version;
    const api = document.getElementById("api");
    const toc = document.getElementById("toc");
    api.innerHTML = "";
    api.appendChild(el("p", { text: doc.info.description || "" }));
    const byTag = {};
    Object.entries(doc.paths).forEach(([path, item]) => Object.entries(item).forEach(([method, op]) => {
      const tag = (op.tags && op.tags[0]) || "other";
      (byTag[tag] = byTag[tag] || []).push([path, method, op]);
    }));
    const order = (doc.tags || []).map(t => t.name).filter(t => byTag[t]).concat(Object.keys(byTag).filter(t => !(doc.tags || []).some(d => d.name === t)));
    order.forEach(tag => {
      api.appendChild(el("h2", { text: tag }));
      byTag[tag].forEach(([path, method, op]) => {
        api.appendChild(operation(doc, path, method, op));
        toc.appendChild(el("a", { href: "#" + (op.operationId || method + path), text: method.toUpperCase() + " " + path }));
      });
    });
  }

  fetch("/openapi.json").then(r => r.json()).then(render).catch(e => {
    state.error = String(e);
    document.getElementById("api").innerHTML = '<p class="error">could not load /openapi.json: ' + String(e) + "</p>";
  });
})();
