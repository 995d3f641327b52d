//! Parse+map timing on one core, for BENCHMARKS figures and the linear-mapping check (issue 11.1).
//!
//! `maptime CONTRACT FILE...` maps each file (repeating small ones until ~1 s of work) and prints MB/s per file
//! and in total. `maptime CONTRACT --grow N FILE` first repeats FILE's first contact element until the document has
//! N contacts (con_id renumbered), to measure how time grows with the number of contacts.

use processor::contract::Contract;
use processor::mapping::map_document;
use std::path::Path;
use std::time::Instant;

fn app_id_of(xml: &str) -> i64 {
    let Some(i) = xml.find("<Request") else {
        return 0;
    };
    let rest = &xml[i..];
    let Some(j) = rest.find(" ID=\"") else {
        return 0;
    };
    let v = &rest[j + 5..];
    v[..v.find('"').unwrap_or(0)].parse().unwrap_or(0)
}

fn grow(xml: &str, contacts: usize) -> String {
    let open = ["<contact ", "<IL_contact "];
    let (start, tag) = open
        .iter()
        .filter_map(|t| xml.find(t).map(|i| (i, &t[1..t.len() - 1])))
        .min()
        .expect("document has a contact element");
    let close = format!("</{tag}>");
    let end = xml[start..]
        .find(&close)
        .map(|e| start + e + close.len())
        .expect("contact element is closed");
    let block = &xml[start..end];
    let con = block.find("con_id=\"").expect("contact has a con_id") + 8;
    let con_end = con + block[con..].find('"').expect("quoted");
    let mut out = String::with_capacity(xml.len() + block.len() * contacts);
    out.push_str(&xml[..start]);
    for n in 0..contacts {
        out.push_str(&block[..con]);
        out.push_str(&(900_000 + n).to_string());
        out.push_str(&block[con_end..]);
    }
    out.push_str(&xml[end..]);
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let contract = Contract::from_file(Path::new(&args[0])).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let (grow_to, files) = if args.get(1).map(String::as_str) == Some("--grow") {
        (
            Some(args[2].parse::<usize>().expect("contact count")),
            &args[3..],
        )
    } else {
        (None, &args[1..])
    };
    let mut total_bytes = 0f64;
    let mut total_secs = 0f64;
    let (mut ok, mut failed) = (0, 0);
    for f in files {
        let raw = std::fs::read_to_string(f).expect("readable UTF-8 file");
        let xml = match grow_to {
            Some(n) => grow(&raw, n),
            None => raw,
        };
        let id = app_id_of(&xml);
        let t0 = Instant::now();
        let mut reps = 0u32;
        let mut result = None;
        while reps == 0 || (t0.elapsed().as_secs_f64() < 0.2 && reps < 10_000) {
            result = Some(map_document(&contract, id, &xml));
            reps += 1;
        }
        let secs = t0.elapsed().as_secs_f64() / f64::from(reps);
        match result.expect("ran once") {
            Ok(_) => ok += 1,
            Err(e) => {
                failed += 1;
                if grow_to.is_some() || files.len() < 5 {
                    eprintln!("{f}: {e}");
                }
            }
        }
        total_bytes += xml.len() as f64;
        total_secs += secs;
        if files.len() < 5 {
            println!(
                "{f}: {:.1} MB in {:.4} s = {:.0} MB/s",
                xml.len() as f64 / 1e6,
                secs,
                xml.len() as f64 / 1e6 / secs
            );
        }
    }
    println!(
        "{} files ({ok} mapped, {failed} failed), {:.1} MB, {:.4} s, {:.0} MB/s",
        files.len(),
        total_bytes / 1e6,
        total_secs,
        total_bytes / 1e6 / total_secs
    );
}
