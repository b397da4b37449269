"""What is allowed: config schema, label patterns, guard and limit specs, money, RE2."""
