package config

import (
	"slices"
	"strings"
)

// region holds the hosts Anaplan publishes for one region (its URL, IP and
// allow-list requirements page): where OAuth lives, which hosts scripts call
// with a token, and the classic authentication host.
type region struct {
	oauthHost  string   // the "OAuth 2.0 API" host
	injectHost []string // Integration/ALM, Audit and CloudWorks API hosts
	authHost   string   // the classic Authentication API host
}

// sharedRegions use the US data-centre hosts.
var sharedRegions = []string{"us1", "us2", "us5", "us7", "eu1", "eu2", "eu4", "ap1"}

// ownHostRegions have <region>.app/.api/.auth.anaplan.com hosts; audit and
// CloudWorks are paths on the API host.
var ownHostRegions = []string{"us9", "eu3", "eu5", "gb1", "sg1", "ae1", "in1", "id1", "me1"}

// lookupRegion returns the hosts of a region name such as "eu3" or "au1".
func lookupRegion(name string) (region, bool) {
	name = strings.ToLower(strings.TrimSpace(name))
	switch {
	case slices.Contains(sharedRegions, name):
		return region{
			oauthHost:  "us1a.app.anaplan.com",
			injectHost: []string{"api.anaplan.com", "api.cloudworks.anaplan.com", "audit.anaplan.com"},
			authHost:   "auth.anaplan.com",
		}, true
	case slices.Contains(ownHostRegions, name):
		return region{
			oauthHost:  name + ".app.anaplan.com",
			injectHost: []string{name + ".api.anaplan.com"},
			authHost:   name + ".auth.anaplan.com",
		}, true
	case name == "ca1":
		return region{
			oauthHost:  "ca1a.app.anaplan.com",
			injectHost: []string{"ca1a.api.anaplan.com"},
			authHost:   "ca1a.auth.anaplan.com",
		}, true
	case name == "au1":
		return region{
			oauthHost:  "au1a.app2.anaplan.com",
			injectHost: []string{"api.au1a.app2.anaplan.com", "api.cloudworks.au1a.app2.anaplan.com"},
			authHost:   "au1a.app2.anaplan.com",
		}, true
	}
	return region{}, false
}

// regionNames lists every region lookupRegion knows, for error messages.
func regionNames() []string {
	names := slices.Concat(sharedRegions, ownHostRegions, []string{"ca1", "au1"})
	slices.Sort(names)
	return names
}

// applyRegion fills the keys that region sets but that no file, variable or
// flag set explicitly. An unknown region was reported where it was read.
func (c *Config) applyRegion() {
	r, ok := lookupRegion(c.Region)
	if c.Region == "" || !ok {
		return
	}
	from := "region " + c.Region + " (" + c.Where("region") + ")"
	for key, value := range map[string]string{
		"oauth.device_authorization_url": "https://" + r.oauthHost + "/oauth/device/code",
		"oauth.token_url":                "https://" + r.oauthHost + "/oauth/token",
		"inject.hosts":                   strings.Join(r.injectHost, ","),
	} {
		if c.Where(key) == "default" {
			c.set(lookupSetting(key), value, from)
		}
	}
}
