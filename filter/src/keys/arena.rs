//! Where a key table keeps its keys' text: one arena of blocks, and each slot's two lengths.

/// The keys' principal texts, in blocks that never move: a block that is full is followed by
/// a new one (1 KiB, doubling up to 64 KiB) and never copied, so building a 100,000-key table
/// holds no second copy of its text (a doubling `String` held the old and the new at once, a
/// good part of a snapshot's high-water mark) and leaves at most one block part-empty.
#[derive(Debug, Clone, Default)]
pub(super) struct Arena {
    blocks: Vec<String>,
    /// Bytes of text held.
    pub(super) len: usize,
}

/// The largest block: a text's offset in its block fits the low 16 bits of its start.
const BLOCK: usize = 1 << 16;

impl Arena {
    /// Appends `parts` as one text; its (start, length).
    pub(super) fn push(&mut self, parts: &[&str]) -> (u32, u32) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if self
            .blocks
            .last()
            .is_none_or(|b| b.len() + n > b.capacity().min(BLOCK))
        {
            let size = self.blocks.last().map_or(1024, |b| b.capacity() * 2);
            self.blocks
                .push(String::with_capacity(size.clamp(n, BLOCK.max(n))));
        }
        let block = self.blocks.len() - 1;
        let b = &mut self.blocks[block];
        let offset = b.len();
        for p in parts {
            b.push_str(p);
        }
        self.len += n;
        (((block as u32) << 16) | offset as u32, n as u32)
    }

    /// The text at (start, length).
    pub(super) fn get(&self, start: u32, len: usize) -> &str {
        let (block, offset) = ((start >> 16) as usize, (start & 0xFFFF) as usize);
        &self.blocks[block][offset..offset + len]
    }
}

/// The lengths of a slot's two texts in one `u32` (the slot stays 24 bytes): the principal
/// (`apikey:` + a name of at most 253 bytes) in the low 16 bits, the owner (at most 256
/// bytes, refused beyond by [`crate::entitlement::compile_key`]) in the high 16. The keyId is
/// not kept: 28 bytes more a key would take the table past SPEC §9's 12 MiB at 100,000 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lens(pub(super) u32);

impl Lens {
    pub(super) fn new(principal: usize, owner: usize) -> Lens {
        Lens((principal as u32 & 0xFFFF) | (owner as u32 & 0xFFFF) << 16)
    }

    pub(super) fn principal(self) -> usize {
        (self.0 & 0xFFFF) as usize
    }

    pub(super) fn total(self) -> usize {
        self.principal() + (self.0 >> 16) as usize
    }
}
