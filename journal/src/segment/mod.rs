//! Segment files: how they are named, and the pool of pre-allocated spares.

pub mod spares;

const SUFFIX: &str = ".kseg";
const TMP_SUFFIX: &str = ".kseg.tmp";

/// The file name of segment `seq`: 20 decimal digits, so names sort in sequence order.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}{SUFFIX}")
}

/// The temporary name a spare is zero-filled under before its rename.
pub fn tmp_name(seq: u64) -> String {
    format!("{seq:020}{TMP_SUFFIX}")
}

/// The segment files of a journal directory.
#[derive(Debug, Default)]
pub struct Listing {
    /// Sequence numbers of the segment files, ascending.
    pub segments: Vec<u64>,
    /// Leftover temporary files (spares being zero-filled, rekey copies, checkpoints being written), to be
    /// deleted by recovery.
    pub tmps: Vec<std::path::PathBuf>,
    /// Checkpoints, by the `next_lsn` in their names, ascending.
    pub checkpoints: Vec<u64>,
}

/// Lists `dir`'s segment and temporary files.
pub fn list(vfs: &dyn crate::vfs::Vfs, dir: &std::path::Path) -> std::io::Result<Listing> {
    let mut listing = Listing::default();
    for name in vfs.list(dir)? {
        if let Some(lsn) = crate::format::checkpoint::parse_name(&name) {
            listing.checkpoints.push(lsn);
            continue;
        }
        if crate::format::checkpoint::is_tmp_name(&name) || name == crate::format::horizon::TMP_NAME {
            listing.tmps.push(dir.join(&name));
            continue;
        }
        match parse_name(&name) {
            EntryName::Segment(seq) => listing.segments.push(seq),
            EntryName::Tmp(_) => listing.tmps.push(dir.join(&name)),
            EntryName::Other => {}
        }
    }
    listing.segments.sort_unstable();
    listing.checkpoints.sort_unstable();
    Ok(listing)
}

/// What a directory entry is, by name.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryName {
    Segment(u64),
    Tmp(u64),
    Other,
}

pub fn parse_name(name: &str) -> EntryName {
    let parse = |digits: &str| {
        if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse::<u64>().ok()
        } else {
            None
        }
    };
    if let Some(d) = name.strip_suffix(TMP_SUFFIX) {
        return parse(d).map_or(EntryName::Other, EntryName::Tmp);
    }
    if let Some(d) = name.strip_suffix(SUFFIX) {
        return parse(d).map_or(EntryName::Other, EntryName::Segment);
    }
    EntryName::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_name(&file_name(7)), EntryName::Segment(7));
        assert_eq!(parse_name(&tmp_name(7)), EntryName::Tmp(7));
        assert_eq!(parse_name("LOCK"), EntryName::Other);
        assert_eq!(parse_name("7.kseg"), EntryName::Other);
        assert!(file_name(9) < file_name(10));
    }
}
