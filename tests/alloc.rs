//! Heap allocations on the per-frame path, counted by a global allocator that only this test
//! binary installs.
//!
//! The budget (issue 8) is zero per-frame allocations in steady state: a cart runs for hours,
//! and an allocation per frame is both time on the hot path and a way for fragmentation to
//! grow. The parts echoview owns are asserted to be zero after warm-up: the beat cutter
//! taking a frame (the frame's own buffer comes from the capture, outside the count) and the
//! feature cache once full. Preprocessing a frame into a reused tensor is not zero yet: the
//! resampler it calls allocates on every call, so its count is pinned. tract's encoder is
//! counted and printed (`cargo test --release --test alloc -- --nocapture`); it allocates
//! every run (fresh intermediate and output tensors), so for it the test asserts only that
//! the count does not grow from frame to frame.
//!
//! The counter is per thread, so the test harness's other threads do not disturb it; each
//! test counts only on its own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use echoview::beats::BeatCutter;
use echoview::bench::measure::{cart_frame, simulated_inputs};
use echoview::bundle::Bundle;
use echoview::classify::FeatureCache;
use echoview::engine::{self, EngineKind};
use echoview::pipeline::Input;
use echoview::preprocess::{PreprocessConfig, Preprocessor};

/// The system allocator, counting allocations made on the current thread.
struct Counting;

thread_local! {
    /// Allocations (including reallocations) on this thread so far.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // try_with: the slot is gone while a thread is being torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches only a
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: the caller's contract for `layout` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (r, ALLOCATIONS.with(Cell::get) - before)
}

fn demo() -> Bundle {
    Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")).unwrap()
}

#[test]
fn preprocessing_a_1080p_frame_allocates_a_fixed_count_after_warm_up() {
    // Budget: zero. Measured: fast_image_resize 5 recomputes its filter coefficients (and
    // collects row references) on every `Resizer::resize`, which our `Preprocessor` calls
    // once per frame; everything else in `prepare_frame` reuses its buffers. Until the
    // resampler caches its coefficients the test pins the count down, so that any new
    // allocation on this path fails here.
    let bundle = demo();
    let beat: Vec<_> = (0..3).map(cart_frame).collect();
    let refs: Vec<_> = beat.iter().collect();
    let mut pre = Preprocessor::new(PreprocessConfig::for_bundle(&bundle));
    let region = pre.find_region(&refs).unwrap();
    let mut out = vec![0.0f32; pre.tensor_len()];
    // Warm-up: the resizer sizes its buffers for this size pair.
    pre.prepare_frame(&beat[0], &region, &mut out).unwrap();
    let counts: Vec<u64> = beat
        .iter()
        .map(|frame| {
            let (r, n) = count(|| pre.prepare_frame(frame, &region, &mut out));
            r.unwrap();
            n
        })
        .collect();
    eprintln!("prepare_frame (1080p YUYV -> 128x128): allocations per frame {counts:?}");
    assert!(
        counts.iter().all(|&n| n == counts[0]),
        "allocations per frame vary: {counts:?}"
    );
    assert!(
        counts[0] <= PREPROCESS_ALLOCATIONS,
        "prepare_frame allocates {} times per frame, more than the {PREPROCESS_ALLOCATIONS} \
         fast_image_resize accounts for",
        counts[0]
    );
}

/// What `fast_image_resize`'s `resize` allocates per call for a 1080p sector to 128x128
/// (measured; see the test above).
const PREPROCESS_ALLOCATIONS: u64 = 262;

#[test]
fn the_beat_cutter_takes_a_frame_without_allocating_in_steady_state() {
    // Ten seconds of a simulated scan, frames and ECG interleaved as a source delivers them.
    let inputs = simulated_inputs(6, 70.0).unwrap();
    let total_frames = inputs
        .iter()
        .filter(|i| matches!(i, Input::Frame(_)))
        .count();
    let mut cutter = BeatCutter::new(demo().frames_per_beat());
    let (mut frames, mut frame_allocs, mut other_allocs, mut beats) = (0usize, 0u64, 0u64, 0u64);
    for input in inputs {
        let is_frame = matches!(input, Input::Frame(_));
        let (r, n) = count(|| cutter.push(input));
        r.unwrap();
        // Drain events as a consumer does; a beat's event is per beat, not per frame.
        while cutter.next_event().is_some() {
            beats += 1;
        }
        if is_frame {
            frames += 1;
        }
        // Warm-up: the first third fills the frame history and the detector's buffers.
        if frames < total_frames / 3 {
            continue;
        }
        if is_frame {
            frame_allocs += n;
        } else {
            other_allocs += n;
        }
    }
    eprintln!(
        "beat cutter, steady state: {frame_allocs} allocations over {} frame pushes; \
         {other_allocs} over ECG and truth pushes ({beats} beats cut in all)",
        total_frames - total_frames / 3
    );
    assert!(beats >= 6, "only {beats} beats were cut");
    assert_eq!(
        frame_allocs, 0,
        "pushing frames allocated {frame_allocs} times"
    );
}

#[test]
fn a_full_feature_cache_reuses_its_buffers() {
    let dim = 1408;
    let mut cache = FeatureCache::new(16);
    let features = vec![0.5f32; dim];
    // A 128x128 encoder input: the cache keeps each entry's tensor to match it exactly.
    let tensor = vec![0.25f32; 128 * 128];
    for seq in 0..16 {
        cache.insert(seq, &tensor, &features);
    }
    for seq in 16..64 {
        let ((), n) = count(|| {
            cache.insert(seq, &tensor, &features);
            assert!(cache.get(seq, &tensor).is_some());
        });
        assert_eq!(n, 0, "insert into a full cache allocated {n} times");
    }
}

#[test]
fn tract_encoder_allocations_per_frame_are_counted_and_do_not_grow() {
    let bundle = demo();
    let mut engine = engine::open(&bundle, EngineKind::Tract).unwrap();
    let m = &bundle.manifest.input;
    let image = vec![0.1f32; (m.channels * m.width * m.height) as usize];
    let mut features = vec![0.0f32; bundle.feature_dim()];
    engine.encode(&image, &mut features).unwrap();
    let counts: Vec<u64> = (0..4)
        .map(|_| {
            let (r, n) = count(|| engine.encode(&image, &mut features));
            r.unwrap();
            n
        })
        .collect();
    eprintln!(
        "tract encoder ({}): allocations per frame {counts:?}",
        bundle.manifest.name
    );
    assert!(
        counts.windows(2).all(|w| w[1] <= w[0]),
        "allocations per frame grow: {counts:?}"
    );
}
