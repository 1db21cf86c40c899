//! `[ops] selector`: the label matchers that pick the service's series in the rules.

/// Checks `[ops] selector`: label matchers as PromQL writes them between braces
/// (`job="shop", env=~"prod|staging"`), or nothing.
pub fn check_selector(selector: &str) -> Result<(), String> {
    let mut rest = selector.trim();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "`{selector}` is not a list of label matchers such as job=\"shop\": a label name is expected at `{rest}`"
            ));
        }
        rest = rest[name_end..].trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| rest.starts_with(op))
            .ok_or_else(|| {
                format!("`{selector}`: `{name}` needs one of =, !=, =~, !~ and a quoted value")
            })?;
        rest = rest[op.len()..].trim_start();
        let Some(body) = rest.strip_prefix('"') else {
            return Err(format!(
                "`{selector}`: the value of `{name}` must be in double quotes"
            ));
        };
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end =
            end.ok_or_else(|| format!("`{selector}`: the value of `{name}` has no closing quote"))?;
        rest = body[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!(
                "`{selector}`: matchers are separated by commas, found `{rest}`"
            ));
        }
    }
    Ok(())
}
