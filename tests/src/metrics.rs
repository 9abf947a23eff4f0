//! A small parser for the Prometheus text exposition format.

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples =
            text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).filter_map(parse_sample).collect();
        Metrics { text: text.to_string(), samples }
    }

    /// Samples named `name` whose labels include every pair in `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    /// The value of the single sample `name` with (at least) `labels`; `None` if absent.
    /// Panics when several samples match (the query is ambiguous).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        match found.len() {
            0 => None,
            1 => Some(found[0].value),
            _ => panic!("ambiguous metric query {name} {labels:?}: {found:?}"),
        }
    }

    /// Like `get`, with an absent sample read as 0.
    pub fn get_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Sum of all samples named `name` with (at least) `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The `# TYPE` declared for `name`.
    pub fn type_of(&self, name: &str) -> Option<String> {
        self.text.lines().find_map(|l| {
            let rest = l.strip_prefix("# TYPE ")?;
            let mut it = rest.split_whitespace();
            (it.next()? == name).then(|| it.next().unwrap_or("").to_string())
        })
    }

    /// Whether any sample or TYPE/HELP line mentions the metric family `name`.
    pub fn has_family(&self, name: &str) -> bool {
        self.type_of(name).is_some()
            || self.samples.iter().any(|s| s.name == name || s.name.starts_with(&format!("{name}_")))
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (name, labels, rest) = if let Some(open) = line.find('{') {
        let name = &line[..open];
        let close = find_closing_brace(line, open)?;
        let labels = parse_labels(&line[open + 1..close]);
        (name, labels, &line[close + 1..])
    } else {
        let mut it = line.splitn(2, char::is_whitespace);
        let name = it.next()?;
        (name, Vec::new(), it.next().unwrap_or(""))
    };
    let value_str = rest.split_whitespace().next()?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.trim().to_string(), labels, value })
}

fn find_closing_brace(line: &str, open: usize) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_str = false;
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'}' if !in_str => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() || chars.next() != Some('=') || chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.push((key.trim().to_string(), val));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_histograms() {
        let m = Metrics::parse(
            "# TYPE zael_decisions_total counter\n\
             zael_decisions_total{domain=\"a\",code=\"ok\"} 3\n\
             zael_decisions_total{code=\"over_limit\",domain=\"a\"} 2\n\
             # TYPE zael_decision_duration_seconds histogram\n\
             zael_decision_duration_seconds_bucket{le=\"+Inf\"} 5\n\
             zael_decision_duration_seconds_count 5\n\
             weird{a=\"x,}y\\\"z\"} 1.5\n",
        );
        assert_eq!(m.get("zael_decisions_total", &[("domain", "a"), ("code", "ok")]), Some(3.0));
        assert_eq!(m.get("zael_decisions_total", &[("domain", "a"), ("code", "over_limit")]), Some(2.0));
        assert_eq!(m.sum("zael_decisions_total", &[]), 5.0);
        assert_eq!(m.get("zael_decision_duration_seconds_count", &[]), Some(5.0));
        assert_eq!(m.type_of("zael_decision_duration_seconds").as_deref(), Some("histogram"));
        assert_eq!(m.get("weird", &[("a", "x,}y\"z")]), Some(1.5));
        assert!(m.has_family("zael_decision_duration_seconds"));
    }
}
