//! Quality metrics over predictions: logloss, AUC, accuracy for classification; RMSE,
//! MAE, R² for regression. Pure functions over slices.

/// Mean binary logloss with probabilities clipped to [1e-15, 1 - 1e-15].
pub fn logloss(y: &[f32], p: &[f32]) -> f64 {
    let n = y.len().max(1) as f64;
    y.iter().zip(p).map(|(y, p)| binary_loss(*y, *p)).sum::<f64>() / n
}

/// Logloss of one example.
pub fn binary_loss(y: f32, p: f32) -> f64 {
    let p = (p as f64).clamp(1e-15, 1.0 - 1e-15);
    if y > 0.5 {
        -p.ln()
    } else {
        -(1.0 - p).ln()
    }
}

/// Area under the ROC curve (ties get the average rank). NaN without both classes.
pub fn auc(y: &[f32], p: &[f32]) -> f64 {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let (mut rank_sum, mut i) = (0.0f64, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && p[order[j + 1]] == p[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|k| y[**k] > 0.5).count() as f64 * rank;
        i = j + 1;
    }
    let pos = y.iter().filter(|v| **v > 0.5).count() as f64;
    let neg = y.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Share of examples whose thresholded probability (0.5) matches the label.
pub fn accuracy(y: &[f32], p: &[f32]) -> f64 {
    let hits = y.iter().zip(p).filter(|(y, p)| (**p > 0.5) == (**y > 0.5)).count();
    hits as f64 / y.len().max(1) as f64
}

pub fn rmse(y: &[f32], p: &[f32]) -> f64 {
    let n = y.len().max(1) as f64;
    (y.iter().zip(p).map(|(y, p)| ((y - p) as f64).powi(2)).sum::<f64>() / n).sqrt()
}

pub fn mae(y: &[f32], p: &[f32]) -> f64 {
    let n = y.len().max(1) as f64;
    y.iter().zip(p).map(|(y, p)| ((y - p) as f64).abs()).sum::<f64>() / n
}

/// Coefficient of determination: 1 − SS_res / SS_tot.
pub fn r2(y: &[f32], p: &[f32]) -> f64 {
    let n = y.len().max(1) as f64;
    let mean = y.iter().map(|v| *v as f64).sum::<f64>() / n;
    let ss_tot: f64 = y.iter().map(|v| (*v as f64 - mean).powi(2)).sum();
    let ss_res: f64 = y.iter().zip(p).map(|(y, p)| ((y - p) as f64).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let y = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auc(&y, &[0.1, 0.4, 0.35, 0.8]), 0.75);
        assert_eq!(auc(&y, &[0.5, 0.5, 0.5, 0.5]), 0.5);
        assert_eq!(accuracy(&y, &[0.1, 0.6, 0.7, 0.9]), 0.75);
        assert!((logloss(&[1.0], &[0.5]) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((rmse(&[1.0, 3.0], &[2.0, 2.0]) - 1.0).abs() < 1e-12);
        assert!((mae(&[1.0, 3.0], &[2.0, 5.0]) - 1.5).abs() < 1e-12);
        assert!((r2(&[1.0, 3.0], &[1.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!((r2(&[1.0, 3.0], &[2.0, 2.0])).abs() < 1e-12);
    }
}
