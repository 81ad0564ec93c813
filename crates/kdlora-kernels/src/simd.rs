//! Branch-free f32 math that the compiler vectorises, and [`vectorized`], which compiles a loop for
//! the widest vector unit the CPU has (chosen at run time: the crate itself targets baseline x86-64,
//! where loops get 4-lane SSE2 at best and every `exp`/`erfc` is a scalar library call).
//!
//! Accuracy (checked in `tests/hotpath` against f64 on 23,001 points in [-13, 10]): GELU within a
//! relative `2e-7 x² + 1e-6` (the `-x²/2` argument of `exp` carries f32 rounding that grows with
//! x²), its derivative within `2e-7 x² + 2e-6`, or 1e-7 absolute where `Φ + xφ` cancels.

/// `e^a` for f32: `2^k e^r` with `|r| <= ln2 / 2` and a degree-7 Taylor polynomial for `e^r`.
/// Underflows to 0 below -87.3 (where f32 goes subnormal); `a` above 88 gives `e^88`.
#[inline(always)]
pub(crate) fn exp(a: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a rounding instruction.
    const ROUND: f32 = 12_582_912.0;
    let clamped = a.clamp(-87.0, 88.0);
    let k = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = k.mul_add(-LN2_LO, k.mul_add(-LN2_HI, clamped));
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = r.mul_add(p, c);
    }
    // 2^k from the bits of `k + 127 + ROUND`, whose low mantissa bits hold the integer k + 127 (an
    // `as i32` cast would not vectorise: it saturates and maps NaN to 0, a scalar check per lane).
    let biased = (k + (127.0 + ROUND)).to_bits() & 0xff;
    let scale = f32::from_bits(biased << 23);
    if a < -87.3 { 0.0 } else { p * scale }
}

/// `erfc(z)` for `z >= 0` as `t exp(-z² + P(t))`, `t = 1 / (1 + z/2)`, with the Chebyshev-fitted
/// `P` of Press et al., *Numerical Recipes* §6.2 (fractional error below 1.2e-7 in exact
/// arithmetic). Relative precision holds in the tail, where `1 - erf` cancels.
#[inline(always)]
fn erfc_nonnegative(z: f32) -> f32 {
    const P: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let t = 1.0 / 0.5f32.mul_add(z, 1.0);
    let mut p = P[9];
    for &c in P[..9].iter().rev() {
        p = p.mul_add(t, c);
    }
    t * exp(p - z * z)
}

/// The standard normal CDF `Φ(x) = erfc(-x / √2) / 2`, taking the small side `erfc(|x| / √2) / 2`
/// directly so the negative tail keeps its relative precision.
#[inline(always)]
pub(crate) fn cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_nonnegative(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x <= 0.0 { half_tail } else { 1.0 - half_tail }
}

/// Defines a function whose body is compiled three times: for AVX-512, for AVX2 + FMA and for the
/// baseline, the version picked at run time from the CPU's features. The `#[inline(always)]` math
/// above inlines into each copy and vectorises 16, 8 or 4 lanes wide. (A closure handed to one
/// wrapper would not do: it is not reliably inlined into it, and then every `mul_add` is a library
/// call.)
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) $body
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $body
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (and with it AVX2 and FMA), checked just above.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}
pub(crate) use vectorized;
