// Tables whose rows are kept and changed in place: a row per key, a cell's text written only
// when it changes, so a live table neither flickers nor loses focus or selection.

export const money = (value) => value == null ? "—" : Number(value).toFixed(2);

// The row `id` of `body` with `cells` (text, or a node), made if missing; `fields` names the
// cells (`data-field`) of a new row.
export function upsertRow(body, id, cells, fields = []) {
  let row = document.getElementById(id);
  if (!row) {
    row = document.createElement("tr");
    row.id = id;
    cells.forEach((_, i) => {
      const cell = document.createElement("td");
      if (fields[i]) cell.dataset.field = fields[i];
      row.append(cell);
    });
    body.append(row);
  }
  cells.forEach((value, i) => {
    const cell = row.cells[i];
    if (value instanceof Node) {
      if (cell.firstChild !== value) cell.replaceChildren(value);
    } else {
      const text = value == null ? "—" : String(value);
      if (cell.textContent !== text) cell.textContent = text;
    }
  });
  return row;
}

// Puts `body`'s rows in the order of `ids` (each made or updated by `render(id)`), moving only
// those out of place, and removes the rest.
export function syncRows(body, ids, render) {
  ids.forEach((id, i) => {
    const row = render(id);
    if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] ?? null);
  });
  while (body.rows.length > ids.length) body.rows[ids.length].remove();
}
