package shard

import "errors"

var (
	// ErrInvalidConfig is wrapped by every error Config.Validate and
	// Config.UnmarshalBinary return.
	ErrInvalidConfig = errors.New("shard: invalid configuration")

	// ErrCorruptCommand is wrapped by every error UnmarshalCommand returns,
	// and is the Result error for a log entry whose data cannot be decoded.
	ErrCorruptCommand = errors.New("shard: corrupt command")

	// ErrInvalidCommand is the Result error of a command that decodes but
	// asks for something impossible: an unknown operation, group 0, a group
	// without members, a shard out of range, a repeated group, a session
	// command with sequence number 0.
	ErrInvalidCommand = errors.New("shard: invalid command")

	// ErrGroupExists is the Result error of a Join naming a group that is
	// already in the latest configuration. The whole Join is refused.
	ErrGroupExists = errors.New("shard: group already joined")

	// ErrUnknownGroup is the Result error of a Leave or Move naming a group
	// that is not in the latest configuration. The whole command is refused.
	ErrUnknownGroup = errors.New("shard: unknown group")

	// ErrStaleSequence is the Result error of a command whose sequence
	// number is below the last one applied for its client: the client
	// already moved on, so the original answer is gone.
	ErrStaleSequence = errors.New("shard: stale sequence number")

	// ErrCorruptSnapshot is wrapped by every error Restore returns for input
	// that is not a well-formed, intact controller snapshot.
	ErrCorruptSnapshot = errors.New("shard: corrupt snapshot")
)

// Result errors are cached in the session table and carried in snapshots,
// so each kind the controller decides at apply time has a stable code.
const (
	codeOK             = 0
	codeInvalidCommand = 1
	codeGroupExists    = 2
	codeUnknownGroup   = 3
)

func codeSentinel(code uint64) error {
	switch code {
	case codeInvalidCommand:
		return ErrInvalidCommand
	case codeGroupExists:
		return ErrGroupExists
	case codeUnknownGroup:
		return ErrUnknownGroup
	}
	return nil
}

// applyError is an error decided by Apply. Its message is complete (it
// starts with the sentinel's text) and it unwraps to the sentinel, so
// errors.Is works on results restored from a session cache or snapshot.
type applyError struct {
	code uint64
	msg  string
}

func (e *applyError) Error() string { return e.msg }
func (e *applyError) Unwrap() error { return codeSentinel(e.code) }

func newApplyError(code uint64, msg string) error {
	return &applyError{code: code, msg: codeSentinel(code).Error() + ": " + msg}
}
