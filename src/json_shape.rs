//! What a JSON text would cost once parsed, counted on its bytes in one pass
//! before any value is built: how many values, object members, non-empty
//! containers and how deep. Callers refuse a text over their bounds, so a
//! small document of tiny values (`[0,0,0,...]`) cannot make stsgate build
//! hundreds of times its size in memory. Used for token claims
//! (`trust::validator`), JWKS documents (`trust::jwks`) and client
//! assertions (`engine::clients`).

/// What the values parsed from a JSON text would be, counted on its
/// bytes: never less than the real counts (see the property test).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Every value: the root, array elements, member values; a member
    /// counts twice (`:` and `,`), which only over-estimates.
    pub values: usize,
    pub members: usize,
    /// Objects and arrays that hold something.
    pub containers: usize,
    pub depth: usize,
}

/// One pass over `json`'s bytes, outside strings.
pub fn measure(json: &[u8]) -> Shape {
    let mut shape = Shape { values: 1, ..Shape::default() };
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in json.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                shape.depth = shape.depth.max(depth);
                // An empty `[]` or `{}` allocates nothing.
                let next = json[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
                if !matches!(next, Some(b']' | b'}')) {
                    shape.containers += 1;
                    shape.values += 1;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => shape.values += 1,
            b':' => {
                shape.values += 1;
                shape.members += 1;
            }
            _ => {}
        }
    }
    shape
}
