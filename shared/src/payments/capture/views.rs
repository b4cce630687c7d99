//! Read views of the ledger: the order's payment, invoices and credit memos,
//! and the payment action items.

use super::*;

pub(crate) fn money_of(minor: i64, code: &str) -> Json {
    match Currency::from_code(code) {
        Some(c) => serde_json::to_value(Money::new(minor, c)).unwrap_or(Json::Null),
        None => json!({"minor": minor, "currency": code}),
    }
}

/// The order's payment: the authorization, every transaction with its lines,
/// invoices and credit memos.
pub fn payment_view(db: &dyn Db, order_id: &str) -> Result<Json> {
    let number = db.execute(
        "SELECT number, financial_status FROM orders WHERE id = ?",
        params![order_id],
    )?;
    let Some(pay) = load_payment(db, order_id)? else {
        return Ok(
            json!({"order_id": order_id, "order_number": number.str("number"),
                         "financial_status": number.str("financial_status"), "gateway": null, "transactions": []}),
        );
    };
    let c = pay.currency.as_str();
    let txs = db.execute(
        "SELECT t.*, f.name AS fo_name FROM payment_transactions t LEFT JOIN fulfillment_orders f ON f.id = t.fulfillment_order_id
         WHERE t.order_id = ? ORDER BY t.created_at, t.id",
        params![order_id],
    )?;
    let mut list = Vec::new();
    for t in txs.iter() {
        let id = t.str("id");
        let lines: Vec<Json> = tx_lines(db, &id)?
            .iter()
            .map(|l| json!({"line_no": l.line_no, "quantity": l.units, "net": money_of(l.net, c), "tax": money_of(l.tax, c)}))
            .collect();
        list.push(json!({"id": id, "kind": t.str("kind"), "status": t.str("status"), "gateway": t.str("gateway"),
            "amount": money_of(t.i64("amount_minor"), c), "fulfillment_order": t.opt_str("fo_name"),
            "lines": lines, "shipping": money_of(t.i64("shipping_minor"), c), "shipping_tax": money_of(t.i64("shipping_tax_minor"), c),
            "final": t.i64("final") != 0, "reason": t.opt_str("reason"), "gateway_reference": t.opt_str("gateway_reference"),
            "error": t.opt_str("error_code").map(|code| json!({"code": code, "message": t.opt_str("error_message")})),
            "attempts": t.i64("attempts"), "next_attempt_at": (t.str("status") == "pending").then(|| t.opt_str("next_attempt_at")).flatten(),
            "parent_id": t.opt_str("parent_id"), "created_at": t.str("created_at"), "processed_at": t.opt_str("processed_at")}));
    }
    let docs = |table: &str| -> Result<Vec<Json>> {
        Ok(db
            .execute(
                &format!("SELECT number, amount_minor, issued_at FROM {table} WHERE order_id = ? ORDER BY seq"),
                params![order_id],
            )?
            .iter()
            .map(|r| json!({"number": r.str("number"), "total": money_of(r.i64("amount_minor"), c), "issued_at": r.str("issued_at")}))
            .collect())
    };
    Ok(json!({
        "order_id": order_id, "order_number": number.str("number"),
        "financial_status": number.str("financial_status"),
        "gateway": pay.gateway, "source_gateway": pay.source_gateway, "reference": pay.reference,
        "authorized": money_of(pay.authorized, c), "captured": money_of(pay.captured, c),
        "refunded": money_of(pay.refunded, c), "voided": money_of(pay.voided, c),
        "authorization_expires_at": pay.expires_at,
        "transactions": list, "invoices": docs("invoices")?, "credit_memos": docs("credit_memos")?,
    }))
}

pub fn document(db: &dyn Db, table: &str, number: &str) -> Result<Json> {
    let r = db.execute(
        &format!("SELECT doc FROM {table} WHERE number = ?"),
        params![number.to_ascii_uppercase()],
    )?;
    let what = if table == "invoices" {
        "invoice"
    } else {
        "credit memo"
    };
    let row = r
        .first()
        .ok_or_else(|| Error::not_found(format!("no {what} {number}")))?;
    Ok(serde_json::from_str(&row.str("doc")).unwrap_or(Json::Null))
}

/// A page of invoices or credit memos in number order, optionally of one order.
pub fn documents(
    db: &dyn Db,
    table: &str,
    after: i64,
    order_id: Option<String>,
    limit: i64,
) -> Result<Json> {
    let mut prm = vec![Value::from(after)];
    let mut cond = String::new();
    if let Some(id) = order_id {
        cond = " AND order_id = ?".into();
        prm.push(Value::from(id));
    }
    prm.push(Value::from(limit + 1));
    let r = db.execute(
        &format!("SELECT seq, doc FROM {table} WHERE seq > ?{cond} ORDER BY seq LIMIT ?"),
        &prm,
    )?;
    let mut items: Vec<Json> = r
        .iter()
        .map(|x| serde_json::from_str(&x.str("doc")).unwrap_or(Json::Null))
        .collect();
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items
            .last()
            .and_then(|d| d["number"].as_str().map(str::to_string))
    } else {
        None
    };
    Ok(json!({"items": items, "next_after": next}))
}

/// Captures and refunds that need an operator: declined, or unresolved.
pub fn action_items(db: &dyn Db) -> Result<Json> {
    let r = db.execute(
        "SELECT t.id, t.kind, t.status, t.amount_minor, t.currency, t.error_code, t.error_message, t.processed_at,
                o.number, o.id AS order_id, f.name AS fo_name
         FROM payment_transactions t JOIN orders o ON o.id = t.order_id
         LEFT JOIN fulfillment_orders f ON f.id = t.fulfillment_order_id
         WHERE t.status IN ('failed', 'unknown')
           AND EXISTS (SELECT 1 FROM order_holds h WHERE h.order_id = t.order_id AND h.reason = 'payment_failed' AND h.released_at IS NULL)
         ORDER BY t.processed_at LIMIT 500",
        &[],
    )?;
    Ok(json!({"items": r.iter().map(|t| json!({
        "transaction_id": t.str("id"), "kind": t.str("kind"), "status": t.str("status"),
        "order_id": t.str("order_id"), "order_number": t.str("number"), "fulfillment_order": t.opt_str("fo_name"),
        "amount": money_of(t.i64("amount_minor"), &t.str("currency")),
        "error": {"code": t.opt_str("error_code"), "message": t.opt_str("error_message")},
        "since": t.opt_str("processed_at"),
        "action": if t.str("status") == "unknown" { "check the gateway, then POST /api/payments/orders/{order}/retry" }
                  else { "get a new authorization, then POST /api/payments/orders/{order}/retry" },
    })).collect::<Vec<_>>()}))
}
