#include "check.h"
static void placeholder(void) { CHECK(1); }
CHECK_MAIN(CHECK_TEST(placeholder))
