package client

import (
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// How the retry loop reads the errors a member can answer with.
func TestErrorClasses(t *testing.T) {
	for _, tc := range []struct {
		name                         string
		err                          error
		retryable, notSent, definite bool
	}{
		{"too many requests", rpctypes.ErrGRPCRequestTooManyRequests, true, true, false},
		{"no leader", rpctypes.ErrGRPCNoLeader, true, true, false},
		{"timed out", rpctypes.ErrGRPCTimeout, true, false, false},
		{"request too large", rpctypes.ErrGRPCRequestTooLarge, false, false, true},
		{"other resource exhausted", status.Error(codes.ResourceExhausted, "grpc: received message larger than max"), false, false, true},
		{"not a status", fmt.Errorf("plain"), false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := retryable(tc.err); got != tc.retryable {
				t.Errorf("retryable = %v, want %v", got, tc.retryable)
			}
			if got := notSent(tc.err); got != tc.notSent {
				t.Errorf("notSent = %v, want %v", got, tc.notSent)
			}
			if got := isDefinite(tc.err); got != tc.definite {
				t.Errorf("isDefinite = %v, want %v", got, tc.definite)
			}
		})
	}
}
