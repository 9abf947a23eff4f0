//! The reference's ASCII tables (§2.2): `+-----+` borders, `| h | h |` header and rows,
//! columns as wide as their longest cell in characters, left-aligned unless asked.

pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    render_aligned(headers, rows, &[])
}

/// [`render`] with the columns whose index is in `right` right-aligned.
pub fn render_aligned(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let width =
        |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..headers.len()).map(width).collect();
    let border = format!("+-{}-+", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w - c.chars().count());
                if right.contains(&i) { format!("{pad}{c}") } else { format!("{c}{pad}") }
            })
            .collect();
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
