//! Class names: ultralytics' metadata dict, a names file, or COCO's 80.

use std::path::Path;

use super::ModelError;

/// Parses ultralytics' metadata `names`: a Python dict literal
/// `{0: 'person', 1: "traffic light", ...}` (quotes single or double).
pub fn parse_ultralytics_names(s: &str) -> Result<Vec<String>, ModelError> {
    let bad = |why: &str| ModelError::Names(format!("metadata `names` {why}: {s:.80}"));
    let body = s
        .trim()
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| bad("is not a {id: 'name'} dict"))?;
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let colon = rest
            .find(':')
            .ok_or_else(|| bad("has an entry without ':'"))?;
        let id: usize = rest[..colon]
            .trim()
            .parse()
            .map_err(|_| bad("has a non-numeric id"))?;
        let after = rest[colon + 1..].trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| bad("has an unquoted name"))?;
        let end = after[1..]
            .find(quote)
            .ok_or_else(|| bad("has an unterminated name"))?;
        out.push((id, after[1..1 + end].to_string()));
        rest = after[end + 2..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    out.sort_by_key(|(id, _)| *id);
    if out.iter().enumerate().any(|(i, (id, _))| i != *id) {
        return Err(bad("ids are not 0..n"));
    }
    Ok(out.into_iter().map(|(_, n)| n).collect())
}

/// Reads a names file: one class name per line, blank lines ignored.
pub fn read_names_file(path: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Names(format!("cannot read {}: {e}", path.display())))?;
    Ok(parse_names_lines(&text))
}

pub fn parse_names_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn coco_names() -> Vec<String> {
    const COCO: [&str; 80] = [
        "person",
        "bicycle",
        "car",
        "motorcycle",
        "airplane",
        "bus",
        "train",
        "truck",
        "boat",
        "traffic light",
        "fire hydrant",
        "stop sign",
        "parking meter",
        "bench",
        "bird",
        "cat",
        "dog",
        "horse",
        "sheep",
        "cow",
        "elephant",
        "bear",
        "zebra",
        "giraffe",
        "backpack",
        "umbrella",
        "handbag",
        "tie",
        "suitcase",
        "frisbee",
        "skis",
        "snowboard",
        "sports ball",
        "kite",
        "baseball bat",
        "baseball glove",
        "skateboard",
        "surfboard",
        "tennis racket",
        "bottle",
        "wine glass",
        "cup",
        "fork",
        "knife",
        "spoon",
        "bowl",
        "banana",
        "apple",
        "sandwich",
        "orange",
        "broccoli",
        "carrot",
        "hot dog",
        "pizza",
        "donut",
        "cake",
        "chair",
        "couch",
        "potted plant",
        "bed",
        "dining table",
        "toilet",
        "tv",
        "laptop",
        "mouse",
        "remote",
        "keyboard",
        "cell phone",
        "microwave",
        "oven",
        "toaster",
        "sink",
        "refrigerator",
        "book",
        "clock",
        "vase",
        "scissors",
        "teddy bear",
        "hair drier",
        "toothbrush",
    ];
    COCO.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_ultralytics_names() {
        let n = parse_ultralytics_names("{0: 'person', 1: \"traffic light\", 2: 'it''s'}");
        // `'it''s'` is not Python; the parser stops at the first closing quote.
        assert!(n.is_err() || n.unwrap().len() == 3);
        let n = parse_ultralytics_names("{1: 'b', 0: 'a'}").unwrap();
        assert_eq!(n, vec!["a", "b"]);
        assert!(parse_ultralytics_names("[a, b]").is_err());
        assert!(parse_ultralytics_names("{0: 'a', 2: 'c'}").is_err());
        assert!(parse_ultralytics_names("{0: a}").is_err());
    }

    #[test]
    fn names_file_lines() {
        assert_eq!(parse_names_lines("a\n\n b \nc"), vec!["a", "b", "c"]);
    }

    #[test]
    fn coco_has_80() {
        assert_eq!(coco_names().len(), 80);
    }
}
