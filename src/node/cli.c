/* placeholder while in progress */ typedef int am__placeholder_t;
