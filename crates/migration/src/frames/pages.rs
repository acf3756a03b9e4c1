//! The frames that carry memory: PageBatch (sealed records), PlainPages (pages the host
//! copies), SharedRanges, and RoundEnd.

use std::io::Write;

use helper_abi::record::{self, Kind};

use super::{
    check_version, invalid, page_aligned, write_frame, FrameError, MessageType, Parser,
    MAX_BATCH_RECORDS, MAX_BATCH_RECORD_BYTES, MAX_LANES, MAX_PLAIN_PAGES, MAX_SHARED_RANGES,
    PAGE_BATCH_HEADER_LEN, PAGE_SIZE, PLAIN_ENTRY_HEADER_LEN, PLAIN_PAGES_HEADER_LEN,
    PROTOCOL_VERSION, ROUND_END_LEN,
};

/// The fixed part of a PageBatch: what [`PageBatchHeader::encode`] writes before the
/// caller writes the records straight from its own buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageBatchHeader {
    /// The source helper vCPU that sealed the records.
    pub lane: u16,
    /// The round they were sealed in.
    pub round: u32,
    /// Records that follow.
    pub count: u32,
    /// Bytes of records that follow.
    pub records_len: u32,
}

impl PageBatchHeader {
    /// Checks the bounds that do not need the record bytes: lane, count, and that
    /// `records_len` can hold `count` records of the sizes a batch allows.
    pub fn validate(&self) -> Result<(), FrameError> {
        let kind = MessageType::PageBatch;
        if self.lane >= MAX_LANES {
            return Err(invalid(
                kind,
                "lane",
                format!("{}; lanes are below {MAX_LANES}", self.lane),
            ));
        }
        let count = self.count as usize;
        if count == 0 || count > MAX_BATCH_RECORDS {
            return Err(invalid(
                kind,
                "count",
                format!("{count} records; 1 to {MAX_BATCH_RECORDS} allowed"),
            ));
        }
        let len = self.records_len as usize;
        if len > MAX_BATCH_RECORD_BYTES {
            return Err(FrameError::TooLong {
                kind,
                len: PAGE_BATCH_HEADER_LEN + len,
                max: PAGE_BATCH_HEADER_LEN + MAX_BATCH_RECORD_BYTES,
            });
        }
        let (min, max) = (
            count * record::ZERO_RECORD_SIZE,
            count * record::PAGE_RECORD_SIZE,
        );
        if len < min || len > max {
            return Err(invalid(
                kind,
                "records",
                format!("{len} bytes cannot hold {count} records ({min} to {max} bytes)"),
            ));
        }
        Ok(())
    }

    /// Writes the frame header and the batch header. The caller must then write exactly
    /// `records_len` bytes of records, e.g. `w.write_all(&window[..n])`: the zero-copy
    /// send path. [`PageBatch::header`] builds a header that matches a record buffer.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        let len = PAGE_BATCH_HEADER_LEN + self.records_len as usize;
        let header = super::FrameHeader::new(PROTOCOL_VERSION, MessageType::PageBatch, len)?;
        let mut first = Vec::with_capacity(super::FrameHeader::SIZE + PAGE_BATCH_HEADER_LEN);
        first.extend_from_slice(&header.encode());
        first.extend_from_slice(&self.head_bytes());
        w.write_all(&first).map_err(|source| FrameError::Write {
            kind: MessageType::PageBatch,
            source,
        })
    }

    /// Checks the records of a batch whose bytes are not in one buffer (the target reads
    /// them from the stream straight into a helper's record window) as
    /// [`PageBatch::decode`] checks them: `count` page or zero-page records of this
    /// batch's lane and round, filling `records_len` exactly. `header_at(offset, out)`
    /// copies the 32-byte record header at `offset` of the records into `out`; each
    /// header is read once, and only where it lies inside the records. Returns every
    /// record's header and offset, as the copies read them.
    pub fn check_records<E>(
        &self,
        mut header_at: impl FnMut(usize, &mut [u8; record::HEADER_SIZE]) -> Result<(), E>,
    ) -> Result<Vec<record::Located>, BatchCheckError<E>> {
        self.validate().map_err(BatchCheckError::Frame)?;
        let mut located = Vec::with_capacity(self.count as usize);
        let count = walk_batch(
            self.lane,
            self.round,
            self.records_len as usize,
            &mut header_at,
            &mut |l| located.push(l),
        )?;
        if count != self.count {
            return Err(BatchCheckError::Frame(invalid(
                MessageType::PageBatch,
                "count",
                format!(
                    "declares {} records, but the {} record bytes hold {count}",
                    self.count, self.records_len
                ),
            )));
        }
        Ok(located)
    }

    /// Decodes the 12 bytes before a batch's `records_len` bytes of records (a frame of
    /// version `version`) and checks what [`PageBatchHeader::validate`] checks.
    pub fn decode(
        version: u16,
        head: &[u8; PAGE_BATCH_HEADER_LEN],
        records_len: usize,
    ) -> Result<PageBatchHeader, FrameError> {
        let kind = MessageType::PageBatch;
        check_version(version)?;
        kind.check_len(PAGE_BATCH_HEADER_LEN.saturating_add(records_len))?;
        let mut p = Parser::new(kind, head);
        let lane = p.u16("lane")?;
        let reserved = p.u16("reserved")?;
        let round = p.u32("round")?;
        let count = p.u32("count")?;
        if reserved != 0 {
            return Err(invalid(
                kind,
                "reserved",
                format!("{reserved:#06x} at offset 2; must be 0"),
            ));
        }
        let header = PageBatchHeader {
            lane,
            round,
            count,
            // check_len bounds it far below u32::MAX.
            records_len: records_len as u32,
        };
        header.validate()?;
        Ok(header)
    }

    fn head_bytes(&self) -> [u8; PAGE_BATCH_HEADER_LEN] {
        let mut b = [0u8; PAGE_BATCH_HEADER_LEN];
        b[0..2].copy_from_slice(&self.lane.to_le_bytes());
        // b[2..4]: reserved, zero.
        b[4..8].copy_from_slice(&self.round.to_le_bytes());
        b[8..12].copy_from_slice(&self.count.to_le_bytes());
        b
    }
}

/// Why [`PageBatchHeader::check_records`] refused a batch.
#[derive(Debug)]
pub enum BatchCheckError<E> {
    /// The records break the frame's rules.
    Frame(FrameError),
    /// A header could not be read.
    Read(E),
}

/// Copies the 32-byte record header at an offset of a batch's records.
type HeaderAt<'a, E> = dyn FnMut(usize, &mut [u8; record::HEADER_SIZE]) -> Result<(), E> + 'a;

/// Walks the `len` record bytes of a batch of `lane` and `round` whose 32-byte headers
/// `header_at` copies out, checking each record as a batch's; calls `each` with every
/// record; returns how many there are.
fn walk_batch<E>(
    lane: u16,
    round: u32,
    len: usize,
    header_at: &mut HeaderAt<'_, E>,
    each: &mut dyn FnMut(record::Located),
) -> Result<u32, BatchCheckError<E>> {
    let kind = MessageType::PageBatch;
    let bad = |what: &'static str, why: String| BatchCheckError::Frame(invalid(kind, what, why));
    let mut at = 0usize;
    let mut count: u32 = 0;
    while at < len {
        let i = count;
        if len - at < record::HEADER_SIZE {
            return Err(bad(
                "records",
                format!("record {i} at offset {at} runs past the end of the {len} record bytes"),
            ));
        }
        let mut raw = [0u8; record::HEADER_SIZE];
        header_at(at, &mut raw).map_err(BatchCheckError::Read)?;
        let h = record::RecordHeader::decode(&raw).map_err(|_| {
            bad(
                "records",
                format!(
                    "record {i} at offset {at} has an unknown kind, a length that does not fit its kind, or reserved bits set"
                ),
            )
        })?;
        if h.record_size() > len - at {
            return Err(bad(
                "records",
                format!("record {i} at offset {at} runs past the end of the {len} record bytes"),
            ));
        }
        if h.kind != Kind::PAGE && h.kind != Kind::ZERO {
            return Err(bad(
                "records",
                format!(
                    "record {i} at offset {at} is of kind {}; a batch carries page and zero-page records only",
                    h.kind.0
                ),
            ));
        }
        if u16::from(h.lane) != lane || h.round != round {
            return Err(bad(
                "records",
                format!(
                    "record {i} at offset {at} was sealed by lane {} in round {}, but the batch is lane {lane} round {round}",
                    h.lane, h.round
                ),
            ));
        }
        count += 1;
        if count as usize > MAX_BATCH_RECORDS {
            return Err(bad(
                "count",
                format!("more than {MAX_BATCH_RECORDS} records"),
            ));
        }
        each(record::Located {
            header: h,
            offset: at,
        });
        at += h.record_size();
    }
    Ok(count)
}

/// Source → target: the sealed records of one helper EXPORT, verbatim. Decoding borrows
/// the records from the payload buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageBatch<'a> {
    /// The source helper vCPU that sealed the records (every record's header lane).
    pub lane: u16,
    /// The round they were sealed in (every record's header round).
    pub round: u32,
    /// `count` records: page (4144 bytes) or zero-page (48 bytes).
    pub records: &'a [u8],
}

impl<'a> PageBatch<'a> {
    /// Walks the records (helper-abi `record::walk`) and returns the header that frames
    /// them: 1..=256 page or zero-page records, each with this batch's lane and round,
    /// filling `records` exactly.
    pub fn header(&self) -> Result<PageBatchHeader, FrameError> {
        let kind = MessageType::PageBatch;
        if self.lane >= MAX_LANES {
            return Err(invalid(
                kind,
                "lane",
                format!("{}; lanes are below {MAX_LANES}", self.lane),
            ));
        }
        if self.records.len() > MAX_BATCH_RECORD_BYTES {
            return Err(FrameError::TooLong {
                kind,
                len: PAGE_BATCH_HEADER_LEN + self.records.len(),
                max: PAGE_BATCH_HEADER_LEN + MAX_BATCH_RECORD_BYTES,
            });
        }
        let records = self.records;
        let count = walk_batch(
            self.lane,
            self.round,
            records.len(),
            &mut |at, out| {
                // walk_batch asks only for headers that lie inside the records.
                if let Some(h) = records.get(at..at + record::HEADER_SIZE) {
                    out.copy_from_slice(h);
                }
                Ok::<(), std::convert::Infallible>(())
            },
            &mut |_| {},
        )
        .map_err(|e| match e {
            BatchCheckError::Frame(f) => f,
            BatchCheckError::Read(never) => match never {},
        })?;
        let header = PageBatchHeader {
            lane: self.lane,
            round: self.round,
            count,
            // Bounded by the check above.
            records_len: self.records.len() as u32,
        };
        header.validate()?;
        Ok(header)
    }

    /// The count of records (walks them).
    pub fn count(&self) -> Result<u32, FrameError> {
        Ok(self.header()?.count)
    }

    /// The records with their offsets in `records`. The walk cannot fail on a decoded
    /// batch; on one built by hand it stops at the first malformed record.
    pub fn iter(&self) -> impl Iterator<Item = record::Located> + 'a {
        record::walk(self.records, self.records.len()).map_while(Result::ok)
    }

    /// Writes the frame: the header, then the records straight from `self.records`.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        let header = self.header()?;
        write_frame(
            w,
            PROTOCOL_VERSION,
            MessageType::PageBatch,
            &header.head_bytes(),
            self.records,
        )
    }

    /// Decodes a payload, borrowing the records from it.
    pub fn decode(version: u16, payload: &'a [u8]) -> Result<PageBatch<'a>, FrameError> {
        let kind = MessageType::PageBatch;
        check_version(version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let lane = p.u16("lane")?;
        let reserved = p.u16("reserved")?;
        let round = p.u32("round")?;
        let count = p.u32("count")?;
        if reserved != 0 {
            return Err(invalid(
                kind,
                "reserved",
                format!("{reserved:#06x} at offset 2; must be 0"),
            ));
        }
        let batch = PageBatch {
            lane,
            round,
            records: p.rest(),
        };
        let header = batch.header()?;
        if header.count != count {
            return Err(invalid(
                kind,
                "count",
                format!(
                    "declares {count} records, but the {} record bytes hold {}",
                    batch.records.len(),
                    header.count
                ),
            ));
        }
        Ok(batch)
    }
}

/// A page's contents in a PlainPages frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageData<'a> {
    /// All zero: no bytes on the wire.
    Zero,
    /// The page.
    Bytes(&'a [u8; PAGE_SIZE]),
}

/// One entry of a PlainPages frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainPage<'a> {
    /// The page's guest-physical address, page aligned.
    pub gpa: u64,
    /// Its contents.
    pub data: PageData<'a>,
}

/// Flag bit of a PlainPages entry: a zero page, no data follows.
const PLAIN_ZERO: u8 = 1;

/// Source → target: pages the host copies itself (every page of a plain guest, the
/// shared pages of an SEV guest). Decoding borrows the page data from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainPages<'a> {
    /// The round.
    pub round: u32,
    /// 1..=256 pages, GPAs strictly ascending.
    pub pages: Vec<PlainPage<'a>>,
}

impl<'a> PlainPages<'a> {
    fn validate(&self) -> Result<(), FrameError> {
        let kind = MessageType::PlainPages;
        if self.pages.is_empty() || self.pages.len() > MAX_PLAIN_PAGES {
            return Err(invalid(
                kind,
                "count",
                format!("{} pages; 1 to {MAX_PLAIN_PAGES} allowed", self.pages.len()),
            ));
        }
        let mut prev: Option<u64> = None;
        for (i, page) in self.pages.iter().enumerate() {
            if !page_aligned(page.gpa) {
                return Err(invalid(
                    kind,
                    "gpa",
                    format!("entry {i}: {:#x} is not page aligned", page.gpa),
                ));
            }
            if let Some(prev) = prev {
                if page.gpa <= prev {
                    return Err(invalid(
                        kind,
                        "gpa",
                        format!(
                            "entry {i}: {:#x} does not ascend from {prev:#x} (GPAs must be strictly ascending, no duplicates)",
                            page.gpa
                        ),
                    ));
                }
            }
            prev = Some(page.gpa);
        }
        Ok(())
    }

    /// Writes the frame. Each page is written from its own buffer; wrap an unbuffered
    /// stream in a `BufWriter`.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        let kind = MessageType::PlainPages;
        self.validate()?;
        let len = PLAIN_PAGES_HEADER_LEN
            + self
                .pages
                .iter()
                .map(|p| {
                    PLAIN_ENTRY_HEADER_LEN
                        + match p.data {
                            PageData::Zero => 0,
                            PageData::Bytes(_) => PAGE_SIZE,
                        }
                })
                .sum::<usize>();
        let header = super::FrameHeader::new(PROTOCOL_VERSION, kind, len)?;
        let wr = |w: &mut dyn Write, bytes: &[u8]| {
            w.write_all(bytes)
                .map_err(|source| FrameError::Write { kind, source })
        };
        let mut head = Vec::with_capacity(super::FrameHeader::SIZE + PLAIN_PAGES_HEADER_LEN);
        head.extend_from_slice(&header.encode());
        head.extend_from_slice(&self.round.to_le_bytes());
        // Bounded by validate().
        head.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        wr(w, &head)?;
        for page in &self.pages {
            let mut entry = [0u8; PLAIN_ENTRY_HEADER_LEN];
            entry[..8].copy_from_slice(&page.gpa.to_le_bytes());
            match page.data {
                PageData::Zero => {
                    entry[8] = PLAIN_ZERO;
                    wr(w, &entry)?;
                }
                PageData::Bytes(bytes) => {
                    wr(w, &entry)?;
                    wr(w, bytes)?;
                }
            }
        }
        Ok(())
    }

    /// Decodes a payload, borrowing the page data from it.
    pub fn decode(version: u16, payload: &'a [u8]) -> Result<PlainPages<'a>, FrameError> {
        let kind = MessageType::PlainPages;
        check_version(version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let round = p.u32("round")?;
        let count = p.u32("count")? as usize;
        if count == 0 || count > MAX_PLAIN_PAGES {
            return Err(invalid(
                kind,
                "count",
                format!("{count} pages; 1 to {MAX_PLAIN_PAGES} allowed"),
            ));
        }
        let mut pages = Vec::with_capacity(count);
        for i in 0..count {
            let gpa = p.u64("an entry's gpa")?;
            let flags = p.u8("an entry's flags")?;
            let data = match flags {
                0 => {
                    let bytes = p.take(PAGE_SIZE, "an entry's page data")?;
                    PageData::Bytes(bytes.try_into().expect("take() returned PAGE_SIZE bytes"))
                }
                PLAIN_ZERO => PageData::Zero,
                other => {
                    return Err(invalid(
                        kind,
                        "flags",
                        format!(
                            "entry {i} at offset {}: {other:#04x} has bits other than 0 (zero page) set",
                            p.offset() - 1
                        ),
                    ))
                }
            };
            pages.push(PlainPage { gpa, data });
        }
        p.finish()?;
        let frame = PlainPages { round, pages };
        frame.validate()?;
        Ok(frame)
    }
}

/// A run of pages the guest shares with the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SharedRange {
    /// First page's guest-physical address, page aligned.
    pub gpa: u64,
    /// Pages in the run, at least 1.
    pub pages: u64,
}

/// Source → target: every page the guest shares with the host (the complete set; each
/// frame replaces the previous one). Pages outside these ranges are private.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedRanges {
    /// Ascending, not overlapping; 0..=65536 of them.
    pub ranges: Vec<SharedRange>,
}

impl SharedRanges {
    fn validate(&self) -> Result<(), FrameError> {
        let kind = MessageType::SharedRanges;
        if self.ranges.len() > MAX_SHARED_RANGES {
            return Err(invalid(
                kind,
                "count",
                format!("{} ranges; at most {MAX_SHARED_RANGES}", self.ranges.len()),
            ));
        }
        let mut prev_end: Option<u64> = None;
        for (i, r) in self.ranges.iter().enumerate() {
            if !page_aligned(r.gpa) || r.pages == 0 {
                return Err(invalid(
                    kind,
                    "ranges",
                    format!(
                        "range {i}: {:#x} x {} pages must be page aligned and non-empty",
                        r.gpa, r.pages
                    ),
                ));
            }
            let end = r
                .pages
                .checked_mul(PAGE_SIZE as u64)
                .and_then(|bytes| r.gpa.checked_add(bytes))
                .ok_or_else(|| {
                    invalid(
                        kind,
                        "ranges",
                        format!(
                            "range {i}: {:#x} x {} pages wraps past 2^64",
                            r.gpa, r.pages
                        ),
                    )
                })?;
            if let Some(prev) = prev_end {
                if r.gpa < prev {
                    return Err(invalid(
                        kind,
                        "ranges",
                        format!(
                            "range {i} starts at {:#x}, before the previous one ends at {prev:#x}: ranges must ascend without overlap",
                            r.gpa
                        ),
                    ));
                }
            }
            prev_end = Some(end);
        }
        Ok(())
    }

    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        let mut payload = Vec::with_capacity(4 + 16 * self.ranges.len());
        // Bounded by validate().
        payload.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for r in &self.ranges {
            payload.extend_from_slice(&r.gpa.to_le_bytes());
            payload.extend_from_slice(&r.pages.to_le_bytes());
        }
        write_frame(
            w,
            PROTOCOL_VERSION,
            MessageType::SharedRanges,
            &[],
            &payload,
        )
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<SharedRanges, FrameError> {
        let kind = MessageType::SharedRanges;
        check_version(version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let count = p.u32("count")? as usize;
        // Check the count against the bytes before allocating for it.
        if count > MAX_SHARED_RANGES || p.remaining() != count.saturating_mul(16) {
            return Err(invalid(
                kind,
                "count",
                format!(
                    "declares {count} ranges, but {} bytes follow (16 per range, at most {MAX_SHARED_RANGES})",
                    p.remaining()
                ),
            ));
        }
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            ranges.push(SharedRange {
                gpa: p.u64("a range's gpa")?,
                pages: p.u64("a range's page count")?,
            });
        }
        p.finish()?;
        let frame = SharedRanges { ranges };
        frame.validate()?;
        Ok(frame)
    }
}

/// Source → target: a round is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundEnd {
    /// The round that ended.
    pub round: u32,
    /// Pages sent in it.
    pub pages_sent: u64,
    /// Pages dirtied meanwhile, still to send (0 after stop-and-copy).
    pub dirty_remaining: u64,
}

impl RoundEnd {
    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        let mut b = [0u8; ROUND_END_LEN];
        b[0..4].copy_from_slice(&self.round.to_le_bytes());
        b[4..12].copy_from_slice(&self.pages_sent.to_le_bytes());
        b[12..20].copy_from_slice(&self.dirty_remaining.to_le_bytes());
        write_frame(w, PROTOCOL_VERSION, MessageType::RoundEnd, &b, &[])
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<RoundEnd, FrameError> {
        let kind = MessageType::RoundEnd;
        check_version(version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let frame = RoundEnd {
            round: p.u32("round")?,
            pages_sent: p.u64("pages sent")?,
            dirty_remaining: p.u64("dirty remaining")?,
        };
        p.finish()?;
        Ok(frame)
    }
}
