//! A vector that grows by fixed-size chunks, so that a push never moves what is already in it.
//!
//! The incidents' slots used to be one `Vec`: at a million incidents (~230 MB) a push that
//! doubles it copies every slot into fresh memory, all inside one fold step under the views'
//! write lock. On the benchmark machine that stalled the live views for tens of milliseconds
//! (~77 ms in one case measured), with the other core idle (proto-docs/benchmarks.md,
//! fifteenth session). Chunks of a fixed size are allocated once and filled in place.

use std::ops::{Index, IndexMut};

use crate::state::chunk;

/// Elements per chunk (a chunk of incident slots is ~1 MB).
const CHUNK: usize = 4096;

#[derive(Clone, Debug)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut fresh = Vec::with_capacity(CHUNK);
                fresh.push(value);
                self.chunks.push(fresh);
            }
        }
        self.len += 1;
    }

    /// Room for `additional` more elements in the list of chunks (the chunks themselves are
    /// allocated as they fill).
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.chunks.reserve(additional.div_ceil(CHUNK));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flatten()
    }

    /// The elements from index `start` on.
    pub(crate) fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> + '_ {
        self.chunks
            .get(start / CHUNK..)
            .unwrap_or_default()
            .iter()
            .flatten()
            .skip(start % CHUNK)
    }

    /// The index of the first element for which `pred` is false, the elements being
    /// partitioned by it (as `slice::partition_point`): first the chunk, by its last element
    /// (chunks are never empty), then the place within it.
    pub(crate) fn partition_point(&self, pred: impl Fn(&T) -> bool) -> usize {
        let chunk = self.chunks.partition_point(|c| c.last().is_some_and(&pred));
        match self.chunks.get(chunk) {
            Some(c) => chunk * CHUNK + c.partition_point(&pred),
            None => self.len,
        }
    }

    /// Heap bytes held (see `state::chunk`).
    pub(crate) fn heap_bytes(&self) -> usize {
        chunk(self.chunks.capacity() * std::mem::size_of::<Vec<T>>())
            + self
                .chunks
                .iter()
                .map(|c| chunk(c.capacity() * std::mem::size_of::<T>()))
                .sum::<usize>()
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_vec_across_chunk_boundaries() {
        let n = 3 * CHUNK + 17;
        let mut c = Chunked::default();
        let mut v = Vec::new();
        c.reserve(n);
        for i in 0..n {
            c.push(i * 3);
            v.push(i * 3);
        }
        assert_eq!(c.len(), v.len());
        assert!(c.iter().eq(v.iter()));
        for start in [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK,
            n - 1,
            n,
            n + 5,
        ] {
            assert!(
                c.iter_from(start).eq(v.iter().skip(start)),
                "iter_from({start})"
            );
        }
        for i in [0, CHUNK - 1, CHUNK, n - 1] {
            assert_eq!(c[i], v[i]);
        }
        for x in [0, 1, 2, 3 * CHUNK, 3 * n, 3 * n + 7] {
            assert_eq!(
                c.partition_point(|e| *e < x),
                v.partition_point(|e| *e < x),
                "partition_point at {x}"
            );
        }
        c[CHUNK] = 1;
        v[CHUNK] = 1;
        assert!(c.iter().eq(v.iter()));
        assert!(c.heap_bytes() >= 4 * CHUNK * std::mem::size_of::<usize>());
    }

    #[test]
    fn a_push_moves_nothing_already_in_it() {
        let mut c = Chunked::default();
        c.push(0u64);
        let first: *const u64 = &c[0];
        for i in 1..(2 * CHUNK as u64 + 1) {
            c.push(i);
        }
        assert!(std::ptr::eq(first, &c[0]), "the first element moved");
        assert_eq!(Chunked::<u8>::default().iter_from(0).count(), 0);
    }
}
