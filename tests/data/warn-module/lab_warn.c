// SPDX-License-Identifier: GPL-2.0
/*
 * A kernel WARN on purpose, for the test that a splat fails its run: Debian's kernels have no
 * LKDTM to provoke one, so this module's init does. The module loads (init returns 0), so the
 * run itself goes on; only the console says what happened.
 */
#include <linux/bug.h>
#include <linux/module.h>

static int __init lab_warn_init(void)
{
	WARN(1, "lab_warn: a warning provoked on purpose\n");
	return 0;
}

static void __exit lab_warn_exit(void)
{
}

module_init(lab_warn_init);
module_exit(lab_warn_exit);
MODULE_DESCRIPTION("Provokes a kernel WARN at load, for macvlan-lab's tests");
MODULE_LICENSE("GPL");
