#include <math.h>

/* One projected Adam/Yogi trajectory on a scalar; see adamlab/lab/online1d.py.
   Built with the package (setup.py) with -O2 -ffp-contract=off -fno-fast-math so that no
   fused multiply-add changes a rounding.
   Every expression mirrors adamlab.reference.step, in the same order of operations.
   x[0] = x0 and x[t] is the iterate after step t (t = 1..T). */
static double sgn(double a) { return a > 0.0 ? 1.0 : (a < 0.0 ? -1.0 : a); }

int adamlab_online1d(int yogi, int amsgrad, int bias, long T, const double *g,
                     double alpha, double beta1, double beta2, double eps, double s0,
                     double x0, double lo, double hi, double *x)
{
    double v = 0.0, s = s0, smax = s0, th = x0;
    x[0] = th;
    for (long i = 0; i < T; ++i) {
        double t = (double)(i + 1);
        double gi = g[i];
        double g2 = gi * gi;
        double lr = alpha / sqrt(t);
        if (bias == 2) {  /* "recursive": the state holds the debiased estimates */
            v = v + (gi - v) * ((1.0 - beta1) / (1.0 - pow(beta1, t)));
            double rho = (1.0 - beta2) / (1.0 - pow(beta2, t));
            if (yogi) {
                double c_prev = 1.0 - pow(beta2, t - 1.0);
                s = (c_prev / (1.0 - pow(beta2, t))) * s + rho * sgn(g2 - c_prev * s) * g2;
            } else {
                s = (1.0 - rho) * s + rho * g2;
            }
        } else {
            v = beta1 * v + (1.0 - beta1) * gi;
            if (yogi) s = s - (1.0 - beta2) * sgn(s - g2) * g2;  /* the one line that differs */
            else s = beta2 * s + (1.0 - beta2) * g2;
        }
        double s_used = s;
        if (amsgrad) { smax = (smax >= s || isnan(smax)) ? smax : s; s_used = smax; }
        double v_hat = v, s_hat = s_used;
        if (bias == 1) {
            v_hat = v / (1.0 - pow(beta1, t));
            s_hat = s_used / (1.0 - pow(beta2, t));
        }
        th = th - lr * v_hat / (sqrt(s_hat) + eps);
        th = th < lo ? lo : (th > hi ? hi : th);  /* projection onto [lo, hi] */
        x[i + 1] = th;
    }
    return 0;
}
