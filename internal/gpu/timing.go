//go:build cuda

package gpu

import (
	"fmt"
	"sort"

	"gorgonia.org/cu"
)

// TimeMedian times f with CUDA events on the device stream: warm untimed
// runs, then reps timed runs, and returns the median in milliseconds. f
// queues work through the Backend (or the device's launchers via Do); the
// events bracket exactly the work it queues, not the host's marshalling.
func (d *Device) TimeMedian(warm, reps int, f func()) (float64, error) {
	var start, end cu.Event
	if err := d.Do(func() error {
		var err error
		if start, err = cu.MakeEvent(cu.DefaultEvent); err != nil {
			return fmt.Errorf("cuda: event: %w", err)
		}
		if end, err = cu.MakeEvent(cu.DefaultEvent); err != nil {
			return fmt.Errorf("cuda: event: %w", err)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	defer func() {
		_ = d.Do(func() error {
			_ = cu.DestroyEvent(&start)
			return cu.DestroyEvent(&end)
		})
	}()
	for range warm {
		f()
	}
	times := make([]float64, 0, reps)
	for range reps {
		if err := d.Do(func() error { return start.Record(d.stream) }); err != nil {
			return 0, fmt.Errorf("cuda: record: %w", err)
		}
		f()
		var ms float64
		if err := d.Do(func() error {
			if err := end.Record(d.stream); err != nil {
				return err
			}
			if err := end.Synchronize(); err != nil {
				return err
			}
			var err error
			ms, err = start.Elapsed(end)
			return err
		}); err != nil {
			return 0, fmt.Errorf("cuda: timing: %w", err)
		}
		times = append(times, ms)
	}
	sort.Float64s(times)
	return times[len(times)/2], nil
}
