//! The market-intelligence MCP server: four read-only tools over a deterministic catalog.
//!
//! | tool | arguments | result (`structuredContent`) |
//! |---|---|---|
//! | `search_products` | `query`, optional `category`, `limit` (1–50) | `{products: [{sku, name, category, price, currency, rating}]}` |
//! | `price_history` | `sku`, optional `days` (1–180) | `{sku, currency, points: [{date, price}]}` |
//! | `competitor_prices` | `sku` | `{sku, currency, ours, competitors: [{competitor, price, in_stock}]}` |
//! | `sales_summary` | optional `sku` or `category`, `period` (`7d`, `30d`, `90d`) | `{period, units, revenue, currency, average_price}` |
//!
//! The protocol part is the minimum a client needs: `initialize` (2025-06-18 and 2025-11-25;
//! any other requested version gets the latest), `notifications/*` (no answer), `ping`,
//! `tools/list` (JSON Schemas with `additionalProperties: false`, `readOnlyHint: true`) and
//! `tools/call`; unknown methods get `-32601` (clients probing `server/discover` fall back),
//! malformed JSON `-32700`. Bad arguments are a tool error (`isError: true`) that says why.
//! Prices are in TWD; the price history ends on a fixed date (2026-11-27), not today.

use std::io::{BufRead, Write};

use serde_json::{Map, Value, json};

pub const PROTOCOL_VERSIONS: [&str; 2] = ["2025-11-25", "2025-06-18"];

/// One product of the bundled catalog.
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub sku: &'static str,
    pub name: &'static str,
    pub category: &'static str,
    /// Our current price, TWD.
    pub price: u32,
    /// Rating × 10.
    pub rating: u32,
}

pub const CATALOG: &[Product] = &[
    Product {
        sku: "EW-1001",
        name: "Wireless earbuds Pro",
        category: "audio",
        price: 2490,
        rating: 46,
    },
    Product {
        sku: "EW-1002",
        name: "Noise-cancelling headphones",
        category: "audio",
        price: 6990,
        rating: 47,
    },
    Product {
        sku: "EW-1003",
        name: "Bluetooth speaker mini",
        category: "audio",
        price: 1290,
        rating: 43,
    },
    Product {
        sku: "EW-2001",
        name: "Air fryer 5L",
        category: "kitchen",
        price: 3290,
        rating: 45,
    },
    Product {
        sku: "EW-2002",
        name: "Espresso machine",
        category: "kitchen",
        price: 8990,
        rating: 44,
    },
    Product {
        sku: "EW-2003",
        name: "Rice cooker 10-cup",
        category: "kitchen",
        price: 4590,
        rating: 48,
    },
    Product {
        sku: "EW-3001",
        name: "Robot vacuum",
        category: "home",
        price: 11990,
        rating: 44,
    },
    Product {
        sku: "EW-3002",
        name: "Air purifier HEPA",
        category: "home",
        price: 5990,
        rating: 46,
    },
    Product {
        sku: "EW-3003",
        name: "Dehumidifier 12L",
        category: "home",
        price: 7490,
        rating: 45,
    },
    Product {
        sku: "EW-4001",
        name: "Running shoes",
        category: "sports",
        price: 3680,
        rating: 42,
    },
    Product {
        sku: "EW-4002",
        name: "Yoga mat",
        category: "sports",
        price: 890,
        rating: 47,
    },
    Product {
        sku: "EW-4003",
        name: "Smart fitness band",
        category: "sports",
        price: 1990,
        rating: 41,
    },
];

pub const COMPETITORS: [&str; 3] = ["shopline-mall", "pchome-like", "coupang-like"];

/// The history's last day (fixed, so answers do not depend on the clock).
const END: (i32, u32, u32) = (2026, 11, 27);

/// A small deterministic hash (FNV-1a) for the synthetic series.
fn h(s: &str, n: u64) -> u64 {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in s.bytes() {
        x ^= u64::from(b);
        x = x.wrapping_mul(0x100_0000_01b3);
    }
    x
}

fn product(sku: &str) -> Option<&'static Product> {
    CATALOG.iter().find(|p| p.sku == sku)
}

/// Price `days_ago` days before the end date: within ±8 % of today's, stable per (sku, day).
pub fn price_on(p: &Product, days_ago: u32) -> u32 {
    if days_ago == 0 {
        return p.price;
    }
    let pct = (h(p.sku, u64::from(days_ago)) % 17) as i64 - 8;
    let v = i64::from(p.price) * (100 + pct) / 100;
    // Round to 10 like a shop would.
    (v / 10 * 10) as u32
}

/// Civil date `n` days before [`END`] (proleptic Gregorian; days-from-civil algorithm).
fn date_before(n: u32) -> String {
    fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
        let y = if m <= 2 { y - 1 } else { y } as i64;
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let m = i64::from(m);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
    fn civil_from_days(z: i64) -> (i64, u32, u32) {
        let z = z + 719_468;
        let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }
    let (y, m, d) = civil_from_days(days_from_civil(END.0, END.1, END.2) - i64::from(n));
    format!("{y:04}-{m:02}-{d:02}")
}

fn units_per_day(p: &Product, day: u32) -> u64 {
    // Cheaper and better-rated products sell more; stable per (sku, day).
    let base = 200_000 / u64::from(p.price).max(1) + u64::from(p.rating) / 5;
    base + h(p.sku, 1000 + u64::from(day)) % (base / 2 + 1)
}

/// The `tools/list` entries.
pub fn tools() -> Value {
    let ro = json!({"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true, "openWorldHint": false});
    json!([
        {"name": "search_products",
         "description": "Search the product catalog by free text (name or SKU), optionally within a category.",
         "inputSchema": {"type": "object", "additionalProperties": false, "required": ["query"],
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 200},
                "category": {"type": "string", "enum": ["audio", "kitchen", "home", "sports"]},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50}}},
         "annotations": ro},
        {"name": "price_history",
         "description": "Daily price of one SKU over the last `days` days (default 30), oldest first.",
         "inputSchema": {"type": "object", "additionalProperties": false, "required": ["sku"],
            "properties": {
                "sku": {"type": "string", "pattern": "^EW-[0-9]{4}$"},
                "days": {"type": "integer", "minimum": 1, "maximum": 180}}},
         "annotations": ro},
        {"name": "competitor_prices",
         "description": "Current prices of one SKU at competing shops, with ours for comparison.",
         "inputSchema": {"type": "object", "additionalProperties": false, "required": ["sku"],
            "properties": {"sku": {"type": "string", "pattern": "^EW-[0-9]{4}$"}}},
         "annotations": ro},
        {"name": "sales_summary",
         "description": "Units sold, revenue and average price over a period, for one SKU, one category or everything.",
         "inputSchema": {"type": "object", "additionalProperties": false, "required": ["period"],
            "properties": {
                "sku": {"type": "string", "pattern": "^EW-[0-9]{4}$"},
                "category": {"type": "string", "enum": ["audio", "kitchen", "home", "sports"]},
                "period": {"type": "string", "enum": ["7d", "30d", "90d"]}}},
         "annotations": ro}
    ])
}

type ToolResult = Result<Value, String>;

fn str_arg<'a>(a: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, String> {
    match a.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("'{k}' must be a string")),
    }
}

fn int_arg(a: &Map<String, Value>, k: &str, lo: u64, hi: u64) -> Result<Option<u64>, String> {
    match a.get(k) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            _ => Err(format!("'{k}' must be an integer from {lo} to {hi}")),
        },
    }
}

fn only(a: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match a.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown argument '{k}'")),
        None => Ok(()),
    }
}

fn sku_arg(a: &Map<String, Value>) -> Result<&'static Product, String> {
    let sku = str_arg(a, "sku")?.ok_or("'sku' is required")?;
    product(sku).ok_or_else(|| format!("unknown sku '{sku}'"))
}

pub fn search_products(a: &Map<String, Value>) -> ToolResult {
    only(a, &["query", "category", "limit"])?;
    let q = str_arg(a, "query")?
        .ok_or("'query' is required")?
        .to_lowercase();
    let cat = str_arg(a, "category")?;
    let limit = int_arg(a, "limit", 1, 50)?.unwrap_or(10) as usize;
    let words: Vec<&str> = q.split_whitespace().collect();
    let products: Vec<Value> = CATALOG
        .iter()
        .filter(|p| cat.is_none_or(|c| p.category == c))
        .filter(|p| {
            let hay = format!("{} {} {}", p.name, p.sku, p.category).to_lowercase();
            words.iter().all(|w| hay.contains(w))
        })
        .take(limit)
        .map(|p| {
            json!({"sku": p.sku, "name": p.name, "category": p.category, "price": p.price,
                   "currency": "TWD", "rating": f64::from(p.rating) / 10.0})
        })
        .collect();
    Ok(json!({"products": products}))
}

pub fn price_history(a: &Map<String, Value>) -> ToolResult {
    only(a, &["sku", "days"])?;
    let p = sku_arg(a)?;
    let days = int_arg(a, "days", 1, 180)?.unwrap_or(30) as u32;
    let points: Vec<Value> = (0..days)
        .rev()
        .map(|ago| json!({"date": date_before(ago), "price": price_on(p, ago)}))
        .collect();
    Ok(json!({"sku": p.sku, "currency": "TWD", "points": points}))
}

pub fn competitor_prices(a: &Map<String, Value>) -> ToolResult {
    only(a, &["sku"])?;
    let p = sku_arg(a)?;
    let competitors: Vec<Value> = COMPETITORS
        .iter()
        .map(|c| {
            let pct = (h(&format!("{}{c}", p.sku), 7) % 21) as i64 - 10;
            let price = (i64::from(p.price) * (100 + pct) / 100) / 10 * 10;
            json!({"competitor": c, "price": price, "in_stock": !h(c, u64::from(p.rating)).is_multiple_of(5)})
        })
        .collect();
    Ok(json!({"sku": p.sku, "currency": "TWD", "ours": p.price, "competitors": competitors}))
}

pub fn sales_summary(a: &Map<String, Value>) -> ToolResult {
    only(a, &["sku", "category", "period"])?;
    let period = str_arg(a, "period")?.ok_or("'period' is required")?;
    let days = match period {
        "7d" => 7,
        "30d" => 30,
        "90d" => 90,
        _ => return Err("'period' must be 7d, 30d or 90d".into()),
    };
    let sku = match str_arg(a, "sku")? {
        Some(s) => Some(product(s).ok_or_else(|| format!("unknown sku '{s}'"))?),
        None => None,
    };
    let cat = str_arg(a, "category")?;
    let (mut units, mut revenue) = (0u64, 0u64);
    for p in CATALOG
        .iter()
        .filter(|p| sku.is_none_or(|s| s.sku == p.sku) && cat.is_none_or(|c| p.category == c))
    {
        for d in 0..days {
            let u = units_per_day(p, d);
            units += u;
            revenue += u * u64::from(price_on(p, d));
        }
    }
    let avg = revenue.checked_div(units).unwrap_or(0);
    Ok(
        json!({"period": period, "sku": sku.map(|p| p.sku), "category": cat,
              "units": units, "revenue": revenue, "currency": "TWD", "average_price": avg}),
    )
}

/// Run one tool; `None` for an unknown tool.
pub fn call(name: &str, args: &Map<String, Value>) -> Option<ToolResult> {
    Some(match name {
        "search_products" => search_products(args),
        "price_history" => price_history(args),
        "competitor_prices" => competitor_prices(args),
        "sales_summary" => sales_summary(args),
        _ => return None,
    })
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Answer one JSON-RPC message; `None` for notifications and responses.
pub fn handle(msg: &Value) -> Option<Value> {
    let Some(method) = msg.get("method").and_then(Value::as_str) else {
        // A response to us (we never ask) or garbage with an id.
        return msg
            .get("id")
            .filter(|_| msg.get("result").is_none() && msg.get("error").is_none())
            .map(|id| error(id.clone(), -32600, "invalid request"));
    };
    let id = msg.get("id")?.clone();
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let asked = params.get("protocolVersion").and_then(Value::as_str);
            let version = asked
                .filter(|v| PROTOCOL_VERSIONS.contains(v))
                .unwrap_or(PROTOCOL_VERSIONS[0]);
            json!({"protocolVersion": version,
                   "capabilities": {"tools": {"listChanged": false}},
                   "serverInfo": {"name": "awooop-market-mcp", "version": env!("CARGO_PKG_VERSION")},
                   "instructions": "Read-only market intelligence over a fixed sample catalog (TWD)."})
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Some(error(id, -32602, "tools/call needs params.name"));
            };
            let empty = Map::new();
            let args = match params.get("arguments") {
                None | Some(Value::Null) => &empty,
                Some(Value::Object(m)) => m,
                Some(_) => return Some(error(id, -32602, "arguments must be an object")),
            };
            match call(name, args) {
                None => return Some(error(id, -32602, &format!("unknown tool '{name}'"))),
                Some(Ok(v)) => json!({"content": [{"type": "text", "text": v.to_string()}],
                                      "structuredContent": v, "isError": false}),
                Some(Err(e)) => json!({"content": [{"type": "text", "text": e}], "isError": true}),
            }
        }
        _ => return Some(error(id, -32601, "method not found")),
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// Serve newline-delimited JSON-RPC until the input ends.
pub fn serve(input: impl BufRead, mut output: impl Write) {
    for line in input.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(Value::Array(batch)) => {
                let out: Vec<Value> = batch.iter().filter_map(handle).collect();
                (!out.is_empty()).then_some(Value::Array(out))
            }
            Ok(msg) => handle(&msg),
            Err(_) => Some(error(Value::Null, -32700, "parse error")),
        };
        if let Some(r) = reply
            && writeln!(output, "{r}")
                .and_then(|_| output.flush())
                .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn answers_are_deterministic_and_well_formed() {
        let a = price_history(&args(json!({"sku": "EW-1001", "days": 3}))).unwrap();
        assert_eq!(
            a,
            price_history(&args(json!({"sku": "EW-1001", "days": 3}))).unwrap()
        );
        let pts = a["points"].as_array().unwrap();
        assert_eq!(pts.len(), 3);
        assert_eq!(pts[2]["date"], "2026-11-27");
        assert_eq!(pts[0]["date"], "2026-11-25");
        assert_eq!(pts[2]["price"], 2490);
        assert_eq!(date_before(27 + 31), "2026-09-30");
        let s = search_products(&args(json!({"query": "air", "category": "kitchen"}))).unwrap();
        assert_eq!(s["products"][0]["sku"], "EW-2001");
        assert_eq!(s["products"].as_array().unwrap().len(), 1);
        let c = competitor_prices(&args(json!({"sku": "EW-3001"}))).unwrap();
        assert_eq!(c["competitors"].as_array().unwrap().len(), 3);
        let t = sales_summary(&args(json!({"period": "7d", "category": "audio"}))).unwrap();
        assert!(t["units"].as_u64().unwrap() > 0);
        assert!(t["revenue"].as_u64().unwrap() > t["units"].as_u64().unwrap());
    }

    #[test]
    fn bad_arguments_are_tool_errors() {
        assert!(price_history(&args(json!({"sku": "EW-9999"}))).is_err());
        assert!(price_history(&args(json!({"sku": "EW-1001", "days": 0}))).is_err());
        assert!(search_products(&args(json!({"query": "x", "evil": 1}))).is_err());
        assert!(sales_summary(&args(json!({"period": "1y"}))).is_err());
    }

    #[test]
    fn speaks_mcp_over_lines() {
        let input = [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "price_history", "arguments": {"sku": "EW-1001", "days": 2}}}),
            json!({"jsonrpc": "2.0", "id": 4, "method": "server/discover"}),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "nope"}}),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
            + "\nnot json\n";
        let mut out = Vec::new();
        serve(input.as_bytes(), &mut out);
        let lines: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6, "no answer to the notification");
        assert_eq!(lines[0]["result"]["protocolVersion"], "2025-06-18");
        let names: Vec<&str> = lines[1]["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "search_products",
                "price_history",
                "competitor_prices",
                "sales_summary"
            ]
        );
        for t in lines[1]["result"]["tools"].as_array().unwrap() {
            assert_eq!(t["annotations"]["readOnlyHint"], true);
            assert_eq!(t["inputSchema"]["additionalProperties"], false);
        }
        assert_eq!(lines[2]["result"]["isError"], false);
        assert_eq!(
            lines[2]["result"]["structuredContent"]["points"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(lines[3]["error"]["code"], -32601);
        assert_eq!(lines[4]["error"]["code"], -32602);
        assert_eq!(lines[5]["error"]["code"], -32700);
    }
}
