// Package netutil picks free loopback addresses for local clusters and
// tests that must know a member's address before the member listens.
package netutil
