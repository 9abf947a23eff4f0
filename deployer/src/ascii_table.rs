//! The reference's ASCII tables (§2.2): `+-----+` borders, `| h | h |` header and rows,
//! columns as wide as their longest cell in characters, left-aligned.

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width =
        |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let border = format!("+-{}-+", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> =
            cells.zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = vec![border.clone(), line(&mut headers.iter().copied()), border.clone()];
    for row in rows {
        out.push(line(&mut row.iter().map(String::as_str)));
    }
    out.push(border);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn boxes() {
        let t = super::render(&["Name", "Namespace ID"], &[vec!["default".into(), "abc".into()]]);
        assert_eq!(
            t,
            "+---------+--------------+\n| Name    | Namespace ID |\n+---------+--------------+\n| default | abc          |\n+---------+--------------+"
        );
    }
}
