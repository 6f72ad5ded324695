//! The platform's hourly bill-detail CSV export, read into lines (no I/O). What is known and unknown of the
//! export: `reference/platform-bill.md`. The headers are found by name — the English set (`UsageStartTime`,
//! `InstanceID`, `Usage`, `UsageUnit`, `PretaxAmount`), the Chinese one (`使用开始时间`, `实例ID`, `用量`,
//! `用量单位`, `应付金额`), or the names an operator maps in `[reconcile.columns]` — so a console that renames
//! or reorders columns needs a line of config, not a release.
//!
//! The Instance ID is `ApiKeyID;WorkspaceID;ModelName;input_token|output_token;Channel` (since 2025-12-16), or
//! `BillingType;WorkspaceID;…` before; an empty ApiKeyID is a call made in the console. Lines of other
//! products (an Instance ID not of that shape) are counted and skipped. Anything else that cannot be read is
//! an error naming its line: the whole file is refused, never half imported.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::collections::BTreeMap;

/// One hourly line of the bill, as the comparison needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillLine {
    /// The billing hour (start), in UTC.
    pub hour: DateTime<Utc>,
    /// The console's key ID; `None`: a console call, or the older Instance ID form.
    pub key_id: Option<String>,
    pub workspace: String,
    pub model: String,
    /// `input_token`, `output_token`, or whatever else the platform names.
    pub token_type: String,
    pub channel: String,
    pub tokens: u64,
    /// Payable, CNY, 2 decimals as exported.
    pub amount: Decimal,
}

impl BillLine {
    /// What identifies a line across exports (the channel included).
    pub fn key(&self) -> LineKey {
        (
            self.hour,
            self.key_id.clone().unwrap_or_default(),
            self.workspace.clone(),
            self.model.clone(),
            self.token_type.clone(),
            self.channel.clone(),
        )
    }
}

pub type LineKey = (DateTime<Utc>, String, String, String, String, String);

/// The columns the importer reads, by header name (`[reconcile.columns]`; unset: the known names).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Columns {
    pub hour: Option<String>,
    pub instance_id: Option<String>,
    pub usage: Option<String>,
    pub unit: Option<String>,
    pub amount: Option<String>,
}

/// The header names tried for each column, English then Chinese.
const KNOWN: [(&str, &[&str]); 5] = [
    (
        "hour",
        &["UsageStartTime", "使用开始时间", "消费时间", "账单开始时间"],
    ),
    ("instance_id", &["InstanceID", "Instance ID", "实例ID"]),
    ("usage", &["Usage", "用量"]),
    ("unit", &["UsageUnit", "用量单位"]),
    ("amount", &["PretaxAmount", "应付金额"]),
];

/// A file read: its lines (summed per line key: an export can split one hour's line) and how many lines of
/// other products were skipped.
#[derive(Debug, Default)]
pub struct Bill {
    pub lines: Vec<BillLine>,
    pub skipped: usize,
}

/// Why a file cannot be imported: the line (1 = the header) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ImportError {
    pub line: u64,
    pub problem: String,
}

fn err(line: u64, problem: impl Into<String>) -> ImportError {
    ImportError {
        line,
        problem: problem.into(),
    }
}

/// Reads a whole export. Times without an offset are in `tz` (the platform's: Beijing time).
pub fn read(bytes: &[u8], columns: &Columns, tz: Tz) -> Result<Bill, ImportError> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| err(1, format!("unreadable header: {e}")))?
        .clone();
    let index = find_columns(&headers, columns)?;
    let mut merged: BTreeMap<LineKey, BillLine> = BTreeMap::new();
    let mut bill = Bill::default();
    for (i, record) in reader.records().enumerate() {
        // The line the record starts on, as an editor counts it (a quoted field can span lines).
        let record = record.map_err(|e| {
            let line = e.position().map_or(i as u64 + 2, |p| p.line());
            err(line, format!("unreadable: {e}"))
        })?;
        let line = record.position().map_or(i as u64 + 2, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        let field = |c: usize| record.get(index[c]).unwrap_or("");
        let Some(id) = parse_instance_id(field(1)) else {
            bill.skipped += 1;
            continue;
        };
        let hour = parse_hour(field(0), tz).ok_or_else(|| {
            err(
                line,
                format!(
                    "{:?} is not a date and time (column {})",
                    field(0),
                    &headers[index[0]]
                ),
            )
        })?;
        let tokens = parse_tokens(field(2), field(3)).map_err(|p| err(line, p))?;
        let amount = parse_money(field(4)).ok_or_else(|| {
            err(
                line,
                format!(
                    "{:?} is not an amount (column {})",
                    field(4),
                    &headers[index[4]]
                ),
            )
        })?;
        let l = BillLine {
            hour,
            key_id: id.key_id,
            workspace: id.workspace,
            model: id.model,
            token_type: id.token_type,
            channel: id.channel,
            tokens,
            amount,
        };
        match merged.entry(l.key()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(l);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let m = o.get_mut();
                m.tokens = m
                    .tokens
                    .checked_add(l.tokens)
                    .filter(|t| *t <= crate::usage::Tokens::MAX)
                    .ok_or_else(|| err(line, "token count out of range"))?;
                m.amount += l.amount;
            }
        }
    }
    bill.lines = merged.into_values().collect();
    Ok(bill)
}

/// Each column's position: the mapped name, else the first known name present.
fn find_columns(headers: &csv::StringRecord, columns: &Columns) -> Result<[usize; 5], ImportError> {
    let mapped = [
        &columns.hour,
        &columns.instance_id,
        &columns.usage,
        &columns.unit,
        &columns.amount,
    ];
    let mut out = [0usize; 5];
    for (c, ((name, known), mapped)) in KNOWN.iter().zip(mapped).enumerate() {
        let names: Vec<&str> = match mapped {
            Some(m) => vec![m.as_str()],
            None => known.to_vec(),
        };
        out[c] = names
            .iter()
            .find_map(|n| headers.iter().position(|h| h.eq_ignore_ascii_case(n)))
            .ok_or_else(|| {
                err(
                    1,
                    format!(
                        "no column for {name} (looked for {}); map it with [reconcile.columns] {name} = \"…\"",
                        names.join(", ")
                    ),
                )
            })?;
    }
    Ok(out)
}

/// The fields of an Instance ID of Model Studio's inference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId {
    pub key_id: Option<String>,
    pub workspace: String,
    pub model: String,
    pub token_type: String,
    pub channel: String,
}

/// `ApiKeyID;WorkspaceID;ModelName;TokenType;Channel` (or `BillingType;…`); `None`: another product's line.
pub fn parse_instance_id(s: &str) -> Option<InstanceId> {
    let f: Vec<&str> = s.split(';').map(str::trim).collect();
    let [first, workspace, model, token_type, channel] = f.as_slice() else {
        return None;
    };
    if workspace.is_empty() || model.is_empty() || !token_type.ends_with("_token") {
        return None;
    }
    // A key ID is the console's number; the older form has a billing type (`text_token`) there.
    let key_id = (!first.is_empty() && !first.contains('_')).then(|| first.to_string());
    Some(InstanceId {
        key_id,
        workspace: workspace.to_string(),
        model: model.to_string(),
        token_type: token_type.to_string(),
        channel: channel.to_string(),
    })
}

/// A line's time, truncated to its hour: RFC 3339, or a local time in `tz` (`2026-11-25 13:00:00`,
/// `2026/11/25 13:00`, `2026-11-25T13:00:00`).
pub fn parse_hour(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let at = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => {
            let naive = [
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%d %H:%M",
                "%Y/%m/%d %H:%M:%S",
                "%Y/%m/%d %H:%M",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%dT%H:%M",
            ]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())?;
            tz.from_local_datetime(&naive)
                .earliest()?
                .with_timezone(&Utc)
        }
    };
    Some(crate::pricing::billing_hour(at, tz))
}

/// Tokens from a usage and its unit (`tokens`, `千tokens`, `百万tokens`, `ktokens`, `mtokens`; none: tokens).
pub fn parse_tokens(usage: &str, unit: &str) -> Result<u64, String> {
    let n: Decimal = usage
        .replace(',', "")
        .parse()
        .map_err(|_| format!("{usage:?} is not a usage quantity"))?;
    let unit_key: String = unit
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase();
    let per = match unit_key.trim_end_matches('s') {
        "" | "token" | "个" => Decimal::ONE,
        "千token" | "ktoken" | "1ktoken" | "thousandtoken" => Decimal::from(1000),
        "百万token" | "mtoken" | "1mtoken" | "milliontoken" => Decimal::from(1_000_000),
        _ => {
            return Err(format!(
                "unknown usage unit {unit:?} (tokens, 千tokens or 百万tokens)"
            ))
        }
    };
    let tokens = n.checked_mul(per).ok_or("usage out of range")?;
    if tokens.is_sign_negative() || !tokens.fract().is_zero() {
        return Err(format!(
            "usage {usage} {unit} is not a whole number of tokens"
        ));
    }
    u64::try_from(tokens)
        .ok()
        .filter(|t| *t <= crate::usage::Tokens::MAX)
        .ok_or_else(|| format!("usage {usage} {unit} is out of range"))
}

/// An amount: `12.34`, `¥1,234.56`, `-0.01`.
pub fn parse_money(s: &str) -> Option<Decimal> {
    let clean: String = s
        .chars()
        .filter(|c| !matches!(c, ',' | '¥' | '￥') && !c.is_whitespace())
        .collect();
    clean.parse::<Decimal>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TZ: Tz = chrono_tz::Asia::Shanghai;

    #[test]
    fn both_instance_id_forms_and_console_calls_are_read() {
        let id = parse_instance_id("1234567;llm-abc;deepseek-r1;output_token;app").unwrap();
        assert_eq!(id.key_id.as_deref(), Some("1234567"));
        assert_eq!(
            (id.workspace.as_str(), id.model.as_str()),
            ("llm-abc", "deepseek-r1")
        );
        let old = parse_instance_id("text_token;llm-abc;deepseek-v3;input_token;app").unwrap();
        assert_eq!(old.key_id, None);
        let console = parse_instance_id(";llm-abc;deepseek-v3;input_token;console").unwrap();
        assert_eq!(console.key_id, None);
        assert_eq!(parse_instance_id("i-bp1234567890"), None);
        assert_eq!(parse_instance_id("1;llm;m;gpu_hours;app"), None);
    }

    #[test]
    fn english_and_chinese_exports_read_the_same() {
        let english = "UsageStartTime,ProductCode,InstanceID,Usage,UsageUnit,PretaxAmount\n\
            2026-11-25 13:00:00,sfm,1234567;llm-abc;deepseek-v3;input_token;app,1000,tokens,0.00\n\
            2026-11-25 13:00:00,sfm,1234567;llm-abc;deepseek-v3;output_token;app,2,千tokens,0.02\n\
            2026-11-25 13:00:00,ecs,i-bp1,1,hour,1.00\n";
        let chinese = "\u{feff}使用开始时间,产品,实例ID,用量,用量单位,应付金额\n\
            2026/11/25 13:00,百炼,1234567;llm-abc;deepseek-v3;input_token;app,1000,token,0.00\n\
            2026/11/25 13:00,百炼,1234567;llm-abc;deepseek-v3;output_token;app,\"2,000\",Token,¥0.02\n";
        let a = read(english.as_bytes(), &Columns::default(), TZ).unwrap();
        let b = read(chinese.as_bytes(), &Columns::default(), TZ).unwrap();
        assert_eq!(a.lines, b.lines);
        assert_eq!((a.skipped, b.skipped), (1, 0));
        assert_eq!(a.lines[1].tokens, 2000);
        assert_eq!(
            a.lines[0].hour,
            "2026-11-25T05:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn a_column_mapping_reads_other_headers() {
        let csv = "Start,Id,Qty,Unit,Payable\n2026-11-25T13:00:00+08:00,1;llm-a;deepseek-r1;output_token;app,5,tokens,0.01\n";
        let columns = Columns {
            hour: Some("Start".into()),
            instance_id: Some("Id".into()),
            usage: Some("Qty".into()),
            unit: Some("Unit".into()),
            amount: Some("Payable".into()),
        };
        assert_eq!(read(csv.as_bytes(), &columns, TZ).unwrap().lines.len(), 1);
        let e = read(csv.as_bytes(), &Columns::default(), TZ).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.problem.contains("[reconcile.columns] hour"), "{e}");
    }

    proptest::proptest! {
        /// Any bytes: lines or an error naming a line of the input, never a panic.
        #[test]
        fn any_bytes_read_or_name_a_line(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Err(e) = read(&data, &Columns::default(), TZ) {
                let lines = data.iter().filter(|b| matches!(b, b'\n' | b'\r')).count() as u64 + 2;
                proptest::prop_assert!(e.line >= 1 && e.line <= lines);
            }
        }

        /// A good export with one line broken (a fractional usage) is refused, naming exactly that line.
        #[test]
        fn one_broken_line_is_the_one_named(n in 1usize..30, broken in 0usize..30, tokens in 0u64..1_000_000) {
            let broken = broken % n;
            let mut csv = String::from("UsageStartTime,InstanceID,Usage,UsageUnit,PretaxAmount\n");
            for i in 0..n {
                let usage = if i == broken { format!("{tokens}.5") } else { tokens.to_string() };
                csv.push_str(&format!(
                    "2026-11-25 {:02}:00:00,{i};llm-a;deepseek-r1;output_token;app,{usage},tokens,0.01\n",
                    i % 24
                ));
            }
            let e = read(csv.as_bytes(), &Columns::default(), TZ).unwrap_err();
            proptest::prop_assert_eq!(e.line, broken as u64 + 2);
        }
    }

    #[test]
    fn a_bad_line_is_named() {
        let csv = "UsageStartTime,InstanceID,Usage,UsageUnit,PretaxAmount\n\
            2026-11-25 13:00:00,1;llm-a;deepseek-r1;output_token;app,5,tokens,0.01\n\
            2026-11-25 14:00:00,1;llm-a;deepseek-r1;output_token;app,5.5,tokens,0.01\n";
        let e = read(csv.as_bytes(), &Columns::default(), TZ).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().starts_with("line 3: usage 5.5"), "{e}");
    }
}
