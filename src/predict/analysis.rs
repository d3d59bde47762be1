//! Cephalometric analysis (docs/maths.md#cephalometric-analysis): the angles and distances
//! orthodontists read off the landmarks. Image coordinates: x to the right, y DOWN; every angle
//! here is the unsigned angle between two direction vectors, so the y flip needs no special care,
//! and each measurement names the two directions it compares. Only measurements whose landmarks the
//! set has are reported.
use serde::Serialize;

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measurement {
    pub name: &'static str,
    pub value: f64,
    /// "deg" or "mm".
    pub unit: &'static str,
    /// A reading for people, e.g. "skeletal Class II".
    pub interpretation: Option<String>,
    /// The landmark pairs of the lines involved, for drawing.
    #[serde(skip)]
    pub lines: Vec<(&'static str, &'static str)>,
    /// Every landmark the value is computed from.
    #[serde(skip)]
    pub landmarks: Vec<&'static str>,
    /// Those of [`landmarks`](Self::landmarks) that are doubtful (low confidence or outside the
    /// image): when not empty, the value and its interpretation are not to be trusted.
    pub doubtful_landmarks: Vec<String>,
}

impl Measurement {
    /// "ANB 3.2 deg", with "?" when it rests on doubtful landmarks.
    pub fn short_text(&self) -> String {
        let mark = if self.doubtful_landmarks.is_empty() { "" } else { " ?" };
        format!("{} {:.1} {}{mark}", self.name, self.value, self.unit)
    }

    /// The interpretation and the caveat, for people: "skeletal Class I; depends on doubtful B, Me".
    pub fn note(&self) -> Option<String> {
        let caveat = (!self.doubtful_landmarks.is_empty())
            .then(|| format!("depends on doubtful {}", self.doubtful_landmarks.join(", ")));
        match (self.interpretation.as_deref(), caveat) {
            (Some(i), Some(c)) => Some(format!("{i}; {c}")),
            (Some(i), None) => Some(i.to_string()),
            (None, c) => c,
        }
    }
}

/// Records, in each measurement, which of its landmarks `is_doubtful` says are doubtful.
pub fn flag_doubtful(measurements: &mut [Measurement], is_doubtful: impl Fn(&str) -> bool) {
    for m in measurements {
        m.doubtful_landmarks = m
            .landmarks
            .iter()
            .filter(|s| is_doubtful(s))
            .map(|s| s.to_string())
            .collect();
    }
}

/// Landmarks by symbol.
pub struct Points<'a> {
    pub symbols: &'a [String],
    pub points: &'a [[f64; 2]],
}

impl Points<'_> {
    fn get(&self, symbol: &str) -> Option<[f64; 2]> {
        self.symbols.iter().position(|s| s == symbol).map(|i| self.points[i])
    }
}

fn sub(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] - b[0], a[1] - b[1]]
}

/// Unsigned angle in degrees between directions `u` and `v`.
pub fn angle_between(u: [f64; 2], v: [f64; 2]) -> f64 {
    let dot = u[0] * v[0] + u[1] * v[1];
    let cross = u[0] * v[1] - u[1] * v[0];
    cross.abs().atan2(dot).to_degrees()
}

/// Angle at `vertex` in the triangle a-vertex-b (e.g. S-N-A).
pub fn angle_at(a: [f64; 2], vertex: [f64; 2], b: [f64; 2]) -> f64 {
    angle_between(sub(a, vertex), sub(b, vertex))
}

/// Signed distance from `p` to the line through `a` and `b`, positive on the side `anterior`
/// points to.
pub fn signed_distance(p: [f64; 2], a: [f64; 2], b: [f64; 2], anterior: [f64; 2]) -> f64 {
    let d = sub(b, a);
    let len = d[0].hypot(d[1]);
    let mut normal = [-d[1] / len, d[0] / len];
    if normal[0] * anterior[0] + normal[1] * anterior[1] < 0.0 {
        normal = [-normal[0], -normal[1]];
    }
    let r = sub(p, a);
    r[0] * normal[0] + r[1] * normal[1]
}

/// The usual ANB bands.
pub fn skeletal_class(anb: f64) -> &'static str {
    if anb < 0.0 {
        "skeletal Class III"
    } else if anb <= 4.0 {
        "skeletal Class I"
    } else {
        "skeletal Class II"
    }
}

/// The distinct symbols of some lines, in order of appearance.
fn symbols_of(lines: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for s in lines.iter().flat_map(|(a, b)| [*a, *b]) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Every measurement the landmark set allows. `pixel_size_mm` enables the distances.
pub fn analyse(p: &Points<'_>, pixel_size_mm: Option<f64>) -> Vec<Measurement> {
    let mut out = Vec::new();
    // The landmarks of an angle are those of the lines it compares.
    let deg = |name, value, lines: Vec<(&'static str, &'static str)>| Measurement {
        name,
        value,
        unit: "deg",
        interpretation: None,
        landmarks: symbols_of(&lines),
        lines,
        doubtful_landmarks: Vec::new(),
    };
    let (s, n) = (p.get("S"), p.get("N"));
    if let (Some(s), Some(n), Some(a), Some(b)) = (s, n, p.get("A"), p.get("B")) {
        let sna = angle_at(s, n, a);
        let snb = angle_at(s, n, b);
        out.push(deg("SNA", sna, vec![("S", "N"), ("N", "A")]));
        out.push(deg("SNB", snb, vec![("S", "N"), ("N", "B")]));
        let anb = sna - snb;
        out.push(Measurement {
            interpretation: Some(skeletal_class(anb).to_string()),
            // SNA - SNB: S counts although no drawn line ends there.
            landmarks: vec!["S", "N", "A", "B"],
            ..deg("ANB", anb, vec![("N", "A"), ("N", "B")])
        });
    }
    // Planes compared through direction vectors that both point forward (posterior to anterior).
    let mandibular = p.get("Go").zip(p.get("Me")).map(|(go, me)| sub(me, go));
    if let (Some(po), Some(or), Some(mp)) = (p.get("Po"), p.get("Or"), mandibular) {
        out.push(deg(
            "FMA",
            angle_between(sub(or, po), mp),
            vec![("Po", "Or"), ("Go", "Me")],
        ));
    }
    if let (Some(s), Some(n), Some(mp)) = (s, n, mandibular) {
        out.push(deg(
            "SN-MP",
            angle_between(sub(n, s), mp),
            vec![("S", "N"), ("Go", "Me")],
        ));
    }
    // Incisor axes from tip to apex; U1-SN is read between that axis and S->N (~103 deg normal),
    // IMPA between the lower incisor (apex->tip) and the mandibular plane pointing back (Me->Go).
    let upper = p.get("UIT").zip(p.get("UIA")).map(|(tip, apex)| sub(apex, tip));
    let lower = p.get("LIT").zip(p.get("LIA")).map(|(tip, apex)| sub(apex, tip));
    if let (Some(s), Some(n), Some(u1)) = (s, n, upper) {
        out.push(deg(
            "U1-SN",
            angle_between(u1, sub(n, s)),
            vec![("UIA", "UIT"), ("S", "N")],
        ));
    }
    if let (Some(l1), Some(mp)) = (lower, mandibular) {
        out.push(deg(
            "IMPA",
            angle_between([-l1[0], -l1[1]], [-mp[0], -mp[1]]),
            vec![("LIA", "LIT"), ("Go", "Me")],
        ));
    }
    if let (Some(u1), Some(l1)) = (upper, lower) {
        out.push(deg(
            "Interincisal",
            angle_between(u1, l1),
            vec![("UIA", "UIT"), ("LIA", "LIT")],
        ));
    }
    // Ricketts' E-line (pronasale to soft-tissue pogonion): lips behind it are negative.
    if let (Some(mm), Some(s), Some(n), Some(pn), Some(pog)) = (pixel_size_mm, s, n, p.get("Pn"), p.get("Pog`")) {
        let anterior = sub(n, s);
        for (name, symbol) in [("Ls to E-line", "Ls"), ("Li to E-line", "Li")] {
            if let Some(lip) = p.get(symbol) {
                out.push(Measurement {
                    name,
                    value: signed_distance(lip, pn, pog, anterior) * mm,
                    unit: "mm",
                    interpretation: None,
                    lines: vec![("Pn", "Pog`")],
                    // S and N give the sign (which side is in front).
                    landmarks: vec!["Pn", "Pog`", symbol, "S", "N"],
                    doubtful_landmarks: Vec::new(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point at `len` from `from`, in the direction `deg` degrees from +x, turning towards +y
    /// (image y is down).
    fn polar(from: [f64; 2], deg: f64, len: f64) -> [f64; 2] {
        let r = deg.to_radians();
        [from[0] + len * r.cos(), from[1] + len * r.sin()]
    }

    /// S, N, A and B with S-N horizontal (face to the right): N->S points along 180 deg, A placed
    /// so the angle S-N-A is 82 deg, B so S-N-B is 79 deg (ANB = 3 -> Class I); and Go and Me of
    /// a mandibular plane descending 25 deg.
    fn class_i_profile() -> ([[f64; 2]; 4], [[f64; 2]; 2]) {
        let n = [1000.0, 500.0];
        let s = [300.0, 500.0];
        let a = polar(n, 180.0 - 82.0, 400.0);
        let b = polar(n, 180.0 - 79.0, 700.0);
        let go = [400.0, 1000.0];
        let me = polar(go, 25.0, 600.0);
        ([s, n, a, b], [go, me])
    }

    fn measure(symbols: &[&str], points: &[[f64; 2]], mm: Option<f64>) -> Vec<Measurement> {
        let symbols: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        analyse(
            &Points {
                symbols: &symbols,
                points,
            },
            mm,
        )
    }

    fn value(ms: &[Measurement], name: &str) -> f64 {
        ms.iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .value
    }

    #[test]
    fn angles_of_hand_placed_landmarks() {
        let ([s, n, a, b], [go, me]) = class_i_profile();
        // The mandibular plane is 25 deg below Frankfort (horizontal, Po -> Or forward).
        let po = [250.0, 600.0];
        let or = [850.0, 600.0];
        let ms = measure(
            &["S", "N", "A", "B", "Po", "Or", "Go", "Me"],
            &[s, n, a, b, po, or, go, me],
            None,
        );
        assert!((value(&ms, "SNA") - 82.0).abs() < 1e-9);
        assert!((value(&ms, "SNB") - 79.0).abs() < 1e-9);
        assert!((value(&ms, "ANB") - 3.0).abs() < 1e-9);
        assert_eq!(
            ms.iter().find(|m| m.name == "ANB").unwrap().interpretation.as_deref(),
            Some("skeletal Class I")
        );
        assert!((value(&ms, "FMA") - 25.0).abs() < 1e-9);
        assert!((value(&ms, "SN-MP") - 25.0).abs() < 1e-9); // S-N is parallel to Frankfort here
        assert!(ms.iter().all(|m| m.name != "IMPA"), "no incisor landmarks, no IMPA");
    }

    #[test]
    fn incisor_angles_and_e_line() {
        let s = [300.0, 500.0];
        let n = [1000.0, 500.0];
        // Upper incisor: apex above and behind its tip, axis at 110 deg to S->N when read
        // tip->apex: tip->apex direction is 180+70 = 250 deg from +x (up and back).
        let uit = [1000.0, 1300.0];
        let uia = polar(uit, 180.0 + 70.0, 250.0);
        // Lower incisor: apex below and behind its tip; tip->apex at 110 deg (down and back).
        let lit = [990.0, 1310.0];
        let lia = polar(lit, 110.0, 220.0);
        // Mandibular plane Go -> Me at 25 deg below horizontal.
        let go = [400.0, 1500.0];
        let me = polar(go, 25.0, 700.0);
        // E-line vertical at x = 1200; upper lip 30 px behind it, lower lip 10 px in front.
        let pn = [1200.0, 900.0];
        let pog_soft = [1200.0, 1700.0];
        let ls = [1170.0, 1250.0];
        let li = [1210.0, 1380.0];
        let ms = measure(
            &[
                "S", "N", "UIT", "UIA", "LIT", "LIA", "Go", "Me", "Pn", "Pog`", "Ls", "Li",
            ],
            &[s, n, uit, uia, lit, lia, go, me, pn, pog_soft, ls, li],
            Some(0.1),
        );
        // tip->apex at 250 deg vs S->N at 0 deg: 110 deg.
        assert!((value(&ms, "U1-SN") - 110.0).abs() < 1e-9);
        // apex->tip at 290 deg vs Me->Go at 205 deg: 85 deg.
        assert!((value(&ms, "IMPA") - 85.0).abs() < 1e-9);
        // tip->apex directions 250 and 110 deg: 140 deg apart.
        assert!((value(&ms, "Interincisal") - 140.0).abs() < 1e-9);
        assert!((value(&ms, "Ls to E-line") + 3.0).abs() < 1e-9);
        assert!((value(&ms, "Li to E-line") - 1.0).abs() < 1e-9);
        // Without a pixel size there are no millimetre distances.
        let no_mm = measure(&["S", "N", "Pn", "Pog`", "Ls"], &[s, n, pn, pog_soft, ls], None);
        assert!(no_mm.is_empty());
    }

    #[test]
    fn measurements_on_doubtful_landmarks_say_so() {
        let ([s, n, a, b], [go, me]) = class_i_profile();
        let mut ms = measure(&["S", "N", "A", "B", "Go", "Me"], &[s, n, a, b, go, me], None);
        flag_doubtful(&mut ms, |s| s == "B" || s == "S");
        let find = |name: &str| ms.iter().find(|m| m.name == name).unwrap();
        assert!(find("SNA").doubtful_landmarks == ["S"]);
        assert_eq!(find("ANB").doubtful_landmarks, ["S", "B"]);
        assert_eq!(
            find("ANB").note().unwrap(),
            "skeletal Class I; depends on doubtful S, B"
        );
        assert_eq!(find("ANB").short_text(), "ANB 3.0 deg ?");
        // SN-MP rests on S too; nothing here depends on B alone without saying so.
        assert_eq!(find("SN-MP").doubtful_landmarks, ["S"]);
        let json = serde_json::to_value(find("ANB")).unwrap();
        assert_eq!(json["doubtful_landmarks"], serde_json::json!(["S", "B"]));
        // Sound landmarks: no caveat.
        flag_doubtful(&mut ms, |_| false);
        assert!(ms.iter().all(|m| m.doubtful_landmarks.is_empty()));
        assert_eq!(
            ms.iter().find(|m| m.name == "ANB").unwrap().note().unwrap(),
            "skeletal Class I"
        );
    }

    #[test]
    fn skeletal_class_bands() {
        assert_eq!(skeletal_class(-1.0), "skeletal Class III");
        assert_eq!(skeletal_class(0.0), "skeletal Class I");
        assert_eq!(skeletal_class(4.0), "skeletal Class I");
        assert_eq!(skeletal_class(6.5), "skeletal Class II");
    }
}
