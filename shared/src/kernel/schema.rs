//! The SQLite schema and its idempotent migrations.
//!
//! Spin opens a new connection per request, so [`migrate`] is cheap when there
//! is nothing to do: one `PRAGMA user_version` read. When a migration is due, it
//! runs under `BEGIN IMMEDIATE`, re-reads the version inside the lock (another
//! instance may have migrated meanwhile) and applies what is missing. WAL is set
//! once (it persists in the file); `synchronous=NORMAL` is per connection.

use crate::kernel::db::{Db, DbError};

/// Each entry upgrades the schema by one version; never edit a shipped entry.
pub(crate) const MIGRATIONS: &[&[&str]] = &[
    // 1: orders, lines, holds, events, outbox, webhook receipts, idempotency keys.
    &[
        "CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            number TEXT NOT NULL UNIQUE,
            source TEXT NOT NULL,
            external_id TEXT NOT NULL,
            external_number TEXT,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            fulfillment_status TEXT NOT NULL,
            financial_status TEXT NOT NULL,
            currency TEXT NOT NULL,
            total_minor INTEGER NOT NULL,
            customer_email TEXT,
            customer_name TEXT,
            search_text TEXT NOT NULL,
            placed_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            cancelled_at TEXT,
            closed_at TEXT,
            doc TEXT NOT NULL,
            version INTEGER NOT NULL DEFAULT 1,
            UNIQUE (source, external_id)
        )",
        "CREATE INDEX orders_created ON orders (created_at DESC, id DESC)",
        "CREATE INDEX orders_status ON orders (status, created_at DESC)",
        "CREATE INDEX orders_channel ON orders (channel, created_at DESC)",
        "CREATE INDEX orders_email ON orders (customer_email)",
        "CREATE TABLE order_lines (
            order_id TEXT NOT NULL REFERENCES orders (id),
            line_no INTEGER NOT NULL,
            external_id TEXT,
            sku TEXT NOT NULL,
            name TEXT NOT NULL,
            unit_price_minor INTEGER NOT NULL,
            subtotal_minor INTEGER NOT NULL,
            discount_minor INTEGER NOT NULL,
            tax_minor INTEGER NOT NULL,
            requires_shipping INTEGER NOT NULL,
            qty_ordered INTEGER NOT NULL,
            qty_cancelled INTEGER NOT NULL DEFAULT 0,
            qty_backordered INTEGER NOT NULL DEFAULT 0,
            qty_allocated INTEGER NOT NULL DEFAULT 0,
            qty_released INTEGER NOT NULL DEFAULT 0,
            qty_shipped INTEGER NOT NULL DEFAULT 0,
            qty_delivered INTEGER NOT NULL DEFAULT 0,
            qty_returned INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (order_id, line_no)
        ) WITHOUT ROWID",
        "CREATE INDEX order_lines_sku ON order_lines (sku)",
        "CREATE TABLE order_holds (
            id INTEGER PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id),
            reason TEXT NOT NULL,
            note TEXT,
            created_at TEXT NOT NULL,
            released_at TEXT
        )",
        "CREATE INDEX order_holds_open ON order_holds (order_id) WHERE released_at IS NULL",
        "CREATE INDEX order_holds_reason ON order_holds (reason, created_at) WHERE released_at IS NULL",
        "CREATE TABLE order_events (
            id INTEGER PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id),
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            summary TEXT NOT NULL,
            data TEXT
        )",
        "CREATE INDEX order_events_order ON order_events (order_id, id)",
        "CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            topic TEXT NOT NULL,
            order_id TEXT,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            lease_until TEXT,
            last_error TEXT,
            delivered_at TEXT
        )",
        "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
        "CREATE TABLE webhook_receipts (
            source TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            topic TEXT,
            received_at TEXT NOT NULL,
            order_id TEXT,
            PRIMARY KEY (source, delivery_id)
        ) WITHOUT ROWID",
        "CREATE TABLE idempotency_keys (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO counters (name, value) VALUES ('order_number', 100000)",
    ],
    // 2: order numbers assigned inside the order INSERT (one statement fewer under the write lock).
    &[
        "CREATE TRIGGER orders_number_counter AFTER INSERT ON orders
         BEGIN
            UPDATE counters SET value = value + 1 WHERE name = 'order_number';
         END",
    ],
    // 3: notifications: deliveries fanned out from the outbox, subscriptions, the
    // local mailbox and the e-mail templates (data, editable through the API).
    &[
        "CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox (id),
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            lease_owner TEXT,
            lease_until TEXT,
            last_error TEXT,
            created_at TEXT NOT NULL,
            delivered_at TEXT,
            dead_at TEXT,
            UNIQUE (outbox_id, kind, target)
        )",
        "CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at)",
        "CREATE INDEX outbox_pending ON outbox (state, id)",
        "CREATE TABLE subscriptions (
            id INTEGER PRIMARY KEY,
            url TEXT NOT NULL,
            event_types TEXT NOT NULL,
            secret TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL
        )",
        "CREATE TABLE mailbox (
            id INTEGER PRIMARY KEY,
            delivery_id INTEGER NOT NULL UNIQUE,
            to_address TEXT NOT NULL,
            from_address TEXT NOT NULL,
            subject TEXT NOT NULL,
            text_body TEXT NOT NULL,
            html_body TEXT NOT NULL,
            delivered_at TEXT NOT NULL
        )",
        "CREATE INDEX mailbox_to ON mailbox (to_address, id)",
        "CREATE TABLE email_templates (
            name TEXT PRIMARY KEY,
            topic TEXT NOT NULL,
            recipient TEXT NOT NULL,
            subject TEXT NOT NULL,
            text_body TEXT NOT NULL,
            html_body TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            updated_at TEXT NOT NULL DEFAULT ''
        )",
        "CREATE INDEX email_templates_topic ON email_templates (topic)",
        "INSERT INTO email_templates (name, topic, recipient, subject, text_body, html_body) VALUES
         ('order_confirmation', 'order.received', 'customer',
          'Your order {{number}} is confirmed',
          'Hello {{customer_name}},

thank you for your order {{number}}.

{{#lines}}{{quantity}} x {{name}} ({{sku}})
{{/lines}}
Total: {{totals.total.amount}} {{totals.total.currency}}

We will let you know when it ships.',
          '<p>Hello {{customer_name}},</p><p>thank you for your order <strong>{{number}}</strong>.</p><ul>{{#lines}}<li>{{quantity}} &times; {{name}} ({{sku}})</li>{{/lines}}</ul><p>Total: {{totals.total.amount}} {{totals.total.currency}}</p><p>We will let you know when it ships.</p>'),
         ('shipment_confirmation', 'shipment.created', 'customer',
          'Your order {{number}} has shipped',
          'Hello {{customer_name}},

your order {{number}} is on its way with {{carrier}}.
Tracking number: {{tracking_number}}
{{tracking_url}}',
          '<p>Hello {{customer_name}},</p><p>your order <strong>{{number}}</strong> is on its way with {{carrier}}.</p><p>Tracking number: <a href=\"{{tracking_url}}\">{{tracking_number}}</a></p>'),
         ('download_ready', 'license.assigned', 'customer',
          'Your download for order {{number}} is ready',
          'Hello {{customer_name}},

your licence key for {{name}}: {{license_key}}',
          '<p>Hello {{customer_name}},</p><p>your licence key for {{name}}: <code>{{license_key}}</code></p>'),
         ('backorder_notice', 'order.backordered', 'customer',
          'Part of your order {{number}} is on backorder',
          'Hello {{customer_name}},

the following items of order {{number}} are on backorder and will ship as soon as they arrive:
{{#lines}}{{quantity}} x {{name}} ({{sku}})
{{/lines}}',
          '<p>Hello {{customer_name}},</p><p>the following items of order {{number}} are on backorder and will ship as soon as they arrive:</p><ul>{{#lines}}<li>{{quantity}} &times; {{name}} ({{sku}})</li>{{/lines}}</ul>'),
         ('low_stock_alert', 'stock.low', 'merchant',
          'Low stock: {{sku}}',
          '{{sku}} is low: {{available}} available (threshold {{threshold}}) at {{facility}}.',
          '<p><strong>{{sku}}</strong> is low: {{available}} available (threshold {{threshold}}) at {{facility}}.</p>'),
         ('daily_report', 'report.daily', 'management',
          'Daily fulfillment report {{date}}',
          'Report for {{date}}: {{orders_received}} orders received, {{orders_shipped}} shipped, revenue {{revenue}}.',
          '<p>Report for {{date}}: {{orders_received}} orders received, {{orders_shipped}} shipped, revenue {{revenue}}.</p>')",
    ],
    // 4: daily reports, and the indexes their aggregation needs.
    &[
        "CREATE TABLE daily_reports (
            date TEXT PRIMARY KEY,
            timezone TEXT NOT NULL,
            generated_at TEXT NOT NULL,
            data TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE INDEX orders_cancelled_at ON orders (cancelled_at) WHERE cancelled_at IS NOT NULL",
        "CREATE INDEX order_events_kind_at ON order_events (kind, at)",
        "CREATE INDEX order_holds_created ON order_holds (created_at)",
        "CREATE INDEX order_lines_backordered ON order_lines (order_id) WHERE qty_backordered > 0",
    ],
    // 5: named leases (one chained notification sweep at a time).
    &[
        "CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until TEXT NOT NULL) WITHOUT ROWID",
    ],
    // 6: facilities, catalog, stock per facility, fulfillment orders, routing
    // decisions and configuration, licence-key pools, geographic centroids.
    &[
        "CREATE TABLE facilities (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            services TEXT NOT NULL,
            countries TEXT NOT NULL,
            shipping_methods TEXT NOT NULL,
            latitude REAL,
            longitude REAL,
            daily_capacity INTEGER,
            priority INTEGER NOT NULL,
            active INTEGER NOT NULL,
            endpoints TEXT NOT NULL,
            secret_variable TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE TABLE products (
            sku TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            weight_grams INTEGER NOT NULL,
            backorderable INTEGER NOT NULL,
            digital INTEGER NOT NULL,
            low_stock_threshold INTEGER NOT NULL,
            low_stock_alerted INTEGER NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE TABLE product_parts (
            sku TEXT NOT NULL REFERENCES products (sku),
            facility_id TEXT NOT NULL REFERENCES facilities (id),
            part_number TEXT NOT NULL,
            PRIMARY KEY (sku, facility_id),
            UNIQUE (facility_id, part_number)
        ) WITHOUT ROWID",
        "CREATE TABLE stock (
            sku TEXT NOT NULL REFERENCES products (sku),
            facility_id TEXT NOT NULL REFERENCES facilities (id),
            on_hand INTEGER NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
            reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
            low_alerted INTEGER NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (sku, facility_id)
        ) WITHOUT ROWID",
        "CREATE INDEX stock_facility ON stock (facility_id, sku)",
        "CREATE TABLE stock_movements (
            id INTEGER PRIMARY KEY,
            sku TEXT NOT NULL,
            facility_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            on_hand_delta INTEGER NOT NULL,
            on_hand_after INTEGER NOT NULL,
            reason TEXT,
            reference TEXT,
            actor TEXT NOT NULL,
            at TEXT NOT NULL
        )",
        "CREATE INDEX stock_movements_sku ON stock_movements (sku, facility_id, id)",
        "CREATE TABLE fulfillment_orders (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id),
            name TEXT NOT NULL UNIQUE,
            facility_id TEXT NOT NULL REFERENCES facilities (id),
            status TEXT NOT NULL,
            request_status TEXT NOT NULL,
            pickup INTEGER NOT NULL DEFAULT 0,
            decision_id INTEGER,
            created_at TEXT NOT NULL,
            released_at TEXT,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE INDEX fulfillment_orders_order ON fulfillment_orders (order_id)",
        "CREATE INDEX fulfillment_orders_facility ON fulfillment_orders (facility_id, status)",
        "CREATE INDEX fulfillment_orders_status ON fulfillment_orders (status, created_at)",
        "CREATE TABLE fulfillment_order_lines (
            fulfillment_order_id TEXT NOT NULL REFERENCES fulfillment_orders (id),
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            part_number TEXT,
            quantity INTEGER NOT NULL CHECK (quantity >= 0),
            PRIMARY KEY (fulfillment_order_id, line_no)
        ) WITHOUT ROWID",
        "CREATE TABLE routing_decisions (
            id INTEGER PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id),
            at TEXT NOT NULL,
            trigger TEXT NOT NULL,
            summary TEXT NOT NULL,
            explanation TEXT NOT NULL
        )",
        "CREATE INDEX routing_decisions_order ON routing_decisions (order_id, id)",
        "CREATE TABLE routing_config (
            channel TEXT PRIMARY KEY,
            config TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE TABLE license_keys (
            id INTEGER PRIMARY KEY,
            sku TEXT NOT NULL REFERENCES products (sku),
            key TEXT NOT NULL,
            imported_at TEXT NOT NULL,
            order_id TEXT,
            line_no INTEGER,
            assigned_at TEXT,
            UNIQUE (sku, key)
        )",
        "CREATE INDEX license_keys_free ON license_keys (sku, id) WHERE order_id IS NULL",
        "CREATE INDEX license_keys_order ON license_keys (order_id, line_no) WHERE order_id IS NOT NULL",
        "CREATE TABLE geo_centroids (
            country TEXT NOT NULL,
            postal_prefix TEXT NOT NULL,
            latitude REAL NOT NULL,
            longitude REAL NOT NULL,
            PRIMARY KEY (country, postal_prefix)
        ) WITHOUT ROWID",
        "CREATE INDEX orders_placed ON orders (placed_at, id)",
        "CREATE INDEX order_lines_unplaced ON order_lines (sku)
         WHERE qty_ordered - qty_cancelled - qty_allocated - qty_released - qty_shipped > 0",
    ],
    // 7: the merchant's e-mail when a count or feed leaves fewer units on hand than reserved.
    &[
        "INSERT INTO email_templates (name, topic, recipient, subject, text_body, html_body) VALUES
         ('stock_shortage', 'stock.shortage', 'merchant',
          'Stock shortage: {{sku}} at {{facility}}',
          '{{sku}} at {{facility}}: {{on_hand}} on hand but {{reserved}} reserved for orders ({{shortage}} short, {{kind}}). Allocated orders may need another facility.',
          '<p><strong>{{sku}}</strong> at {{facility}}: {{on_hand}} on hand but {{reserved}} reserved for orders (<strong>{{shortage}} short</strong>, {{kind}}). Allocated orders may need another facility.</p>')",
    ],
    // 8: payments: the authorization per order, the ledger of captures, refunds and
    // voids (the id is the gateway's Idempotency-Key), invoices and credit memos
    // with gap-free numbers, settings.
    &[
        "CREATE TABLE payments (
            order_id TEXT PRIMARY KEY REFERENCES orders (id),
            gateway TEXT NOT NULL,
            source_gateway TEXT,
            reference TEXT,
            currency TEXT NOT NULL,
            authorized_minor INTEGER NOT NULL DEFAULT 0,
            captured_minor INTEGER NOT NULL DEFAULT 0,
            refunded_minor INTEGER NOT NULL DEFAULT 0,
            voided_minor INTEGER NOT NULL DEFAULT 0,
            expires_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE TABLE payment_transactions (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id),
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            gateway TEXT NOT NULL,
            amount_minor INTEGER NOT NULL,
            currency TEXT NOT NULL,
            fulfillment_order_id TEXT,
            parent_id TEXT,
            shipping_minor INTEGER NOT NULL DEFAULT 0,
            shipping_tax_minor INTEGER NOT NULL DEFAULT 0,
            final INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            gateway_reference TEXT,
            error_code TEXT,
            error_message TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            lease_until TEXT,
            created_at TEXT NOT NULL,
            processed_at TEXT
        ) WITHOUT ROWID",
        "CREATE INDEX payment_transactions_order ON payment_transactions (order_id, created_at)",
        "CREATE UNIQUE INDEX payment_transactions_one_capture ON payment_transactions (fulfillment_order_id)
         WHERE kind = 'capture' AND status IN ('pending', 'succeeded', 'unknown')",
        "CREATE INDEX payment_transactions_due ON payment_transactions (next_attempt_at) WHERE status = 'pending'",
        "CREATE TABLE payment_transaction_lines (
            transaction_id TEXT NOT NULL REFERENCES payment_transactions (id),
            line_no INTEGER NOT NULL,
            units INTEGER NOT NULL,
            net_minor INTEGER NOT NULL,
            tax_minor INTEGER NOT NULL,
            PRIMARY KEY (transaction_id, line_no)
        ) WITHOUT ROWID",
        "CREATE TABLE invoices (
            seq INTEGER PRIMARY KEY,
            number TEXT NOT NULL UNIQUE,
            transaction_id TEXT NOT NULL UNIQUE REFERENCES payment_transactions (id),
            order_id TEXT NOT NULL REFERENCES orders (id),
            fulfillment_order_id TEXT,
            currency TEXT NOT NULL,
            amount_minor INTEGER NOT NULL,
            issued_at TEXT NOT NULL,
            doc TEXT NOT NULL
        )",
        "CREATE INDEX invoices_order ON invoices (order_id)",
        "CREATE TABLE credit_memos (
            seq INTEGER PRIMARY KEY,
            number TEXT NOT NULL UNIQUE,
            transaction_id TEXT NOT NULL UNIQUE REFERENCES payment_transactions (id),
            order_id TEXT NOT NULL REFERENCES orders (id),
            currency TEXT NOT NULL,
            amount_minor INTEGER NOT NULL,
            issued_at TEXT NOT NULL,
            doc TEXT NOT NULL
        )",
        "CREATE INDEX credit_memos_order ON credit_memos (order_id)",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    ],
    // 9: fulfillment execution: shipments, parcels, tracking, in-house jobs,
    // rate tables, bins, the shipment confirmation e-mail.
    &[
        "ALTER TABLE stock ADD COLUMN bin TEXT",
        "CREATE TABLE shipments (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL REFERENCES orders (id),
            fulfillment_order_id TEXT NOT NULL REFERENCES fulfillment_orders (id),
            facility_id TEXT NOT NULL,
            origin TEXT NOT NULL,
            external_ref TEXT NOT NULL,
            carrier TEXT,
            service TEXT,
            shipping_method TEXT,
            tracking_number TEXT,
            tracking_url TEXT,
            status TEXT NOT NULL,
            pickup INTEGER NOT NULL DEFAULT 0,
            cost_minor INTEGER,
            currency TEXT,
            shipped_at TEXT NOT NULL,
            delivered_at TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (fulfillment_order_id, external_ref)
        ) WITHOUT ROWID",
        "CREATE INDEX shipments_order ON shipments (order_id, shipped_at)",
        "CREATE INDEX shipments_action ON shipments (status) WHERE status IN ('failed_attempt', 'exception', 'returned_to_sender')",
        "CREATE TABLE shipment_lines (
            shipment_id TEXT NOT NULL REFERENCES shipments (id),
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            PRIMARY KEY (shipment_id, line_no)
        ) WITHOUT ROWID",
        "CREATE TABLE parcels (
            id TEXT PRIMARY KEY,
            shipment_id TEXT NOT NULL REFERENCES shipments (id),
            order_id TEXT NOT NULL,
            tracking_number TEXT,
            carrier TEXT,
            service TEXT,
            weight_grams INTEGER,
            length_mm INTEGER,
            width_mm INTEGER,
            height_mm INTEGER,
            items TEXT NOT NULL,
            label TEXT,
            return_label TEXT,
            status TEXT NOT NULL,
            status_at TEXT,
            created_at TEXT NOT NULL
        ) WITHOUT ROWID",
        "CREATE INDEX parcels_tracking ON parcels (tracking_number)",
        "CREATE INDEX parcels_shipment ON parcels (shipment_id)",
        "CREATE TABLE tracking_events (
            id INTEGER PRIMARY KEY,
            provider TEXT NOT NULL,
            tracking_number TEXT NOT NULL,
            parcel_id TEXT,
            status TEXT NOT NULL,
            raw_status TEXT NOT NULL,
            message TEXT,
            occurred_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (provider, tracking_number, raw_status, occurred_at)
        )",
        "CREATE INDEX tracking_events_number ON tracking_events (tracking_number, id)",
        "CREATE TABLE fulfillment_jobs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            fulfillment_order_id TEXT NOT NULL REFERENCES fulfillment_orders (id),
            order_id TEXT NOT NULL,
            facility_id TEXT NOT NULL,
            status TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            closed_at TEXT,
            UNIQUE (fulfillment_order_id, kind)
        ) WITHOUT ROWID",
        "CREATE INDEX fulfillment_jobs_queue ON fulfillment_jobs (facility_id, kind, status, created_at)",
        "CREATE TABLE shipping_zones (
            country TEXT NOT NULL,
            postal_prefix TEXT NOT NULL,
            zone TEXT NOT NULL,
            PRIMARY KEY (country, postal_prefix)
        ) WITHOUT ROWID",
        "CREATE TABLE shipping_rates (
            carrier TEXT NOT NULL,
            service TEXT NOT NULL,
            zone TEXT NOT NULL,
            max_weight_grams INTEGER NOT NULL,
            price_minor INTEGER NOT NULL,
            currency TEXT NOT NULL,
            PRIMARY KEY (carrier, service, zone, max_weight_grams)
        ) WITHOUT ROWID",
        "UPDATE email_templates SET
            subject = 'Your order {{number}} is on its way',
            text_body = 'Hello {{customer_name}},\n\n{{items}} of your order {{number}} left {{facility_name}} on {{shipped_on}}{{#carrier}} with {{carrier}}{{/carrier}}.\n{{#tracking_number}}Tracking number: {{tracking_number}}\n{{/tracking_number}}{{tracking_url}}',
            html_body = '<p>Hello {{customer_name}},</p><p>{{items}} of your order <strong>{{number}}</strong> left {{facility_name}} on {{shipped_on}}{{#carrier}} with {{carrier}}{{/carrier}}.</p>{{#tracking_number}}<p>Tracking number: <strong>{{tracking_number}}</strong></p>{{/tracking_number}}{{#tracking_url}}<p><a href=\"{{tracking_url}}\">Track the parcel</a></p>{{/tracking_url}}'
         WHERE name = 'shipment_confirmation'",
    ],
    // 10: returns (RMA): the request with its lines, approval with a return label,
    // receipt with inspection (restock or scrap), the refund it led to.
    &[
        "CREATE TABLE returns (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            number TEXT NOT NULL UNIQUE,
            order_id TEXT NOT NULL REFERENCES orders (id),
            status TEXT NOT NULL,
            resolution TEXT NOT NULL,
            refund_shipping INTEGER NOT NULL DEFAULT 0,
            reason TEXT,
            facility_id TEXT,
            return_label TEXT,
            refund_transaction_id TEXT,
            replacement TEXT,
            replacement_order_id TEXT,
            note TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            approved_at TEXT,
            received_at TEXT
        ) WITHOUT ROWID",
        "CREATE INDEX returns_order ON returns (order_id, created_at)",
        "CREATE TABLE return_lines (
            return_id TEXT NOT NULL REFERENCES returns (id),
            line_no INTEGER NOT NULL,
            sku TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            reason TEXT,
            received INTEGER NOT NULL DEFAULT 0,
            restocked INTEGER NOT NULL DEFAULT 0,
            scrapped INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (return_id, line_no)
        ) WITHOUT ROWID",
    ],
    // 11: the fulfillment-center secret variables are `fc_secret_a..c`: Spin's
    // manifest refuses a variable name with a word that starts with a digit
    // (`fc_secret_1`), so facilities saved with the old names follow the rename.
    &[
        "UPDATE facilities SET secret_variable = CASE secret_variable
            WHEN 'fc_secret_1' THEN 'fc_secret_a'
            WHEN 'fc_secret_2' THEN 'fc_secret_b'
            WHEN 'fc_secret_3' THEN 'fc_secret_c' END
         WHERE secret_variable IN ('fc_secret_1', 'fc_secret_2', 'fc_secret_3')",
    ],
    // 12: intake in one statement (issue #16). A webhook's new order is one
    // `INSERT INTO orders ... ON CONFLICT DO NOTHING RETURNING number`; its
    // `intake` column carries the rows the owners of the other tables prepared
    // (lines, holds, timeline, outbox, payment record, delivery receipt), and
    // the routing worker writes them for a whole batch of orders in one
    // set-based statement per table (`routing::allocation::take_up`), then
    // clears the column. The partial index finds the orders still pending.
    &[
        "ALTER TABLE orders ADD COLUMN intake TEXT",
        "CREATE INDEX orders_intake_pending ON orders (created_at) WHERE intake IS NOT NULL",
    ],
    // 13: a stock receipt's reference is booked once per facility
    // (`inventory::receipt` looks it up under the write lock; the index keeps
    // that lookup cheap. Not UNIQUE: each line of a receipt is its own movement,
    // and databases may hold repeats booked before this check).
    &["CREATE INDEX stock_movements_receipt_reference ON stock_movements (facility_id, reference)
         WHERE kind = 'receipt' AND reference IS NOT NULL"],
    // 14: a webhook subscription gets licence keys only when a token with the
    // secrets scope created it with `include_secrets` (`notify::withhold`).
    &["ALTER TABLE subscriptions ADD COLUMN include_secrets INTEGER NOT NULL DEFAULT 0"],
    // 15: a center's signature is accepted once (`kernel::replay`).
    &["CREATE TABLE signatures_seen (signature TEXT PRIMARY KEY, seen_at TEXT NOT NULL)"],
    // 16: a gateway call sent again after reconciliation gets a new idempotency
    // key (`gateway_key`, from `key_created_at`); NULL: the transaction's id.
    &[
        "ALTER TABLE payment_transactions ADD COLUMN gateway_key TEXT",
        "ALTER TABLE payment_transactions ADD COLUMN key_created_at TEXT",
    ],
    // 17: a licence key claimed for an order waits for its capture before it is
    // delivered (`capture_id`: the capture that pays for it; `delivered_at`:
    // when it went to the customer). Keys claimed before this were delivered.
    &[
        "ALTER TABLE license_keys ADD COLUMN capture_id TEXT",
        "ALTER TABLE license_keys ADD COLUMN delivered_at TEXT",
        "UPDATE license_keys SET delivered_at = assigned_at WHERE order_id IS NOT NULL",
        "CREATE INDEX license_keys_capture ON license_keys (capture_id) WHERE capture_id IS NOT NULL",
    ],
    // 18: a Stripe authorization that cannot be captured in parts (no
    // multicapture) is captured once, at the end: `single_capture` is learnt
    // from Stripe's refusal; captures before the last wait as `deferred` (their
    // goods released) and the last one takes their amounts with it. A deferred
    // capture is live, so it keeps its fulfillment order's one capture.
    &[
        "ALTER TABLE payments ADD COLUMN single_capture INTEGER NOT NULL DEFAULT 0",
        "DROP INDEX payment_transactions_one_capture",
        "CREATE UNIQUE INDEX payment_transactions_one_capture ON payment_transactions (fulfillment_order_id)
         WHERE kind = 'capture' AND status IN ('pending', 'succeeded', 'unknown', 'deferred')",
    ],
    // 19: the newest fulfillment-center snapshot applied per facility
    // (`inventory::feeds`), checked and moved in the transaction that applies
    // the levels: with Redis or a store per pod, a check in key-value could
    // let an older snapshot overwrite a newer one (issue #17).
    &["CREATE TABLE inventory_watermarks (
         facility_id TEXT PRIMARY KEY,
         as_of TEXT NOT NULL,
         kind TEXT NOT NULL,
         applied_at TEXT NOT NULL
       )"],
];

pub const LATEST: i64 = MIGRATIONS.len() as i64;

fn version(db: &dyn Db) -> Result<i64, DbError> {
    Ok(db
        .execute("PRAGMA user_version", &[])?
        .first()
        .map(|r| r.i64("user_version"))
        .unwrap_or(0))
}

/// Brings the schema to [`LATEST`]; safe to call on every connection.
pub fn migrate(db: &dyn Db) -> Result<(), DbError> {
    if version(&crate::kernel::db::Patient(db))? >= LATEST {
        return Ok(());
    }
    // WAL persists in the file; it cannot be switched inside a transaction.
    crate::kernel::db::retry_busy(|| tune(db, "PRAGMA journal_mode = WAL"))?;
    crate::kernel::db::transaction(db, |db| {
        let current = version(db)?;
        for (i, steps) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            for sql in steps.iter() {
                db.execute(sql, &[])?;
            }
            db.execute(&format!("PRAGMA user_version = {}", i + 1), &[])?;
        }
        Ok::<_, DbError>(())
    })
}

/// For connections that only read: [`migrate`] (SQLite's own busy timeout stays).
pub fn prepare(db: &dyn Db) -> Result<(), DbError> {
    migrate(db)
}

/// For the write path: `synchronous = NORMAL` (safe in WAL: a power loss may drop
/// the last commits but never corrupts), and no SQLite busy handler, because
/// [`crate::kernel::db::transaction`] waits for the write lock itself with fine polling.
/// On a libSQL server, which manages its own journal and refuses these
/// PRAGMAs, they are skipped ([`tune`]).
pub fn prepare_writer(db: &dyn Db) -> Result<(), DbError> {
    tune(db, "PRAGMA synchronous = NORMAL")?;
    tune(db, "PRAGMA busy_timeout = 0")?;
    migrate(db)
}

/// A PRAGMA that tunes a local SQLite file: applied where the backend takes
/// it, skipped where it refuses it as unsupported (a libSQL server: Spin's
/// `type = "libsql"` database).
fn tune(db: &dyn Db, pragma: &str) -> Result<(), DbError> {
    match db.execute(pragma, &[]) {
        Err(e) if e.is_unsupported_statement() => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::db::native::NativeDb;
    use crate::kernel::db::Rows;

    /// A connection that answers as a libSQL server (sqld 0.24.32) does: the
    /// PRAGMAs that tune a local file are refused as unsupported.
    struct LikeSqld(NativeDb);
    impl Db for LikeSqld {
        fn execute(&self, sql: &str, params: &[crate::kernel::db::Value]) -> Result<Rows, DbError> {
            for p in ["journal_mode", "synchronous", "busy_timeout"] {
                if sql.starts_with(&format!("PRAGMA {p}")) {
                    return Err(DbError(format!(
                        "SQL string could not be parsed: unsupported statement: {sql}"
                    )));
                }
            }
            self.0.execute(sql, params)
        }
    }

    #[test]
    fn a_libsql_server_that_refuses_the_file_pragmas_still_gets_the_schema() {
        let db = LikeSqld(NativeDb::memory());
        prepare_writer(&db).expect("the refused PRAGMAs are skipped");
        assert_eq!(version(&db).unwrap(), LATEST);
        assert!(!db
            .execute("SELECT 1 FROM sqlite_master WHERE name = 'orders'", &[])
            .unwrap()
            .is_empty());
        // A second connection finds the schema current.
        prepare_writer(&db).unwrap();
        // Any other error still fails the connection.
        struct Broken;
        impl Db for Broken {
            fn execute(&self, _: &str, _: &[crate::kernel::db::Value]) -> Result<Rows, DbError> {
                Err(DbError("disk I/O error".into()))
            }
        }
        assert!(prepare_writer(&Broken).is_err());
    }
}
