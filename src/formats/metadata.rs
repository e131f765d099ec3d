//! safetensors `__metadata__` across a conversion: what an output can carry, and the warning when it cannot.

use super::OutputFormat;

/// What happens to a source's `__metadata__` in an output of `format`: the entries a writer should be given
/// (`format` is the writer's own; a stale `crc_num` and keys that name an output tensor are dropped), and a
/// warning when something cannot be carried.
pub fn carried_metadata(
    format: OutputFormat,
    source: &[(String, String)],
    own: &[(String, String)],
    out_names: &[&str],
) -> (Vec<(String, String)>, Option<String>) {
    let mut out: Vec<(String, String)> = own.to_vec();
    let extra: Vec<&(String, String)> = source
        .iter()
        .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
        .collect();
    if extra.is_empty() {
        return (out, None);
    }
    if format != OutputFormat::Safetensors {
        let keys: Vec<&str> = extra.iter().map(|(k, _)| k.as_str()).collect();
        let target = match format {
            OutputFormat::Ckpt => "a MindSpore .ckpt",
            _ => "a torch file",
        };
        return (
            out,
            Some(format!(
                "safetensors __metadata__ not carried ({target} has no place for it): {}",
                keys.join(", ")
            )),
        );
    }
    let mut dropped = Vec::new();
    for (k, v) in extra {
        if k == "crc_num" || out_names.contains(&k.as_str()) {
            dropped.push(k.as_str());
        } else {
            out.push((k.clone(), v.clone()));
        }
    }
    let warn = (!dropped.is_empty()).then(|| {
        format!(
            "safetensors __metadata__ entries dropped (a checksum of the input, or a key naming a tensor, which MindSpore would read as a dtype): {}",
            dropped.join(", ")
        )
    });
    (out, warn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, x)| (k.to_string(), x.to_string()))
            .collect()
    }

    #[test]
    fn metadata_is_carried_where_it_fits() {
        let src = kv(&[
            ("format", "pt"),
            ("test", "a"),
            ("crc_num", "123"),
            ("w", "Int4"),
        ]);
        let own = kv(&[("format", "ms")]);
        let (m, warn) = carried_metadata(OutputFormat::Safetensors, &src, &own, &["w"]);
        assert_eq!(m, kv(&[("format", "ms"), ("test", "a")]));
        let warn = warn.unwrap();
        assert!(warn.contains("crc_num") && warn.contains(", w"), "{warn}");
        for f in [OutputFormat::Ckpt, OutputFormat::Torch] {
            let (m, warn) = carried_metadata(f, &src, &own, &[]);
            assert_eq!(m, own);
            assert!(warn.unwrap().contains("not carried"));
        }
        // nothing beyond our own key: no warning
        let (_, warn) = carried_metadata(OutputFormat::Ckpt, &kv(&[("format", "pt")]), &own, &[]);
        assert!(warn.is_none());
    }
}
