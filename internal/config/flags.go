package config

import "flag"

// Flags are the configuration flags of one command: one per key, named
// after its path (--oauth-client-id), each a string parsed by its key's
// parser when the configuration is loaded.
type Flags struct {
	fs     *flag.FlagSet
	values map[string]flagValue // by flag name
}

type flagValue struct {
	s setting
	v *string
}

// RegisterFlags defines a flag for every key on fs. Only the flags given on
// the command line are applied, so that an unset flag never hides the file
// or the environment.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, values: make(map[string]flagValue, len(settings))}
	for _, s := range settings {
		def := s.def
		if s.key == "state_dir" {
			def = "" // the usage text names both possible defaults
		}
		name := flagName(s.key)
		f.values[name] = flagValue{s, fs.String(name, def, s.usage)}
	}
	return f
}

// applyTo sets c from the flags given on the command line.
func (f *Flags) applyTo(c *Config) {
	f.fs.Visit(func(fl *flag.Flag) {
		if fv, ok := f.values[fl.Name]; ok {
			c.set(fv.s, *fv.v, "flag --"+fl.Name)
		}
	})
}
