"""Reference annotation files as the labelling tools export them (Pascal VOC, LabelImg, LabelMe,
CVAT for images 1.1), and a hostile XML file; used by tests/test_label_formats.py."""

VOC_XML = """<annotation>
\t<folder>VOC2012</folder>
\t<filename>2012_000042.jpg</filename>
\t<source><database>The VOC2012 Database</database><annotation>PASCAL VOC2012</annotation></source>
\t<size><width>64</width><height>48</height><depth>3</depth></size>
\t<segmented>0</segmented>
\t<object>
\t\t<name>person</name><pose>Frontal</pose><truncated>1</truncated><difficult>0</difficult>
\t\t<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>64</xmax><ymax>48</ymax></bndbox>
\t\t<part><name>head</name><bndbox><xmin>20</xmin><ymin>2</ymin><xmax>30</xmax><ymax>12</ymax></bndbox></part>
\t</object>
\t<object>
\t\t<name>dog</name><pose>Left</pose><truncated>0</truncated><difficult>1</difficult>
\t\t<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>
\t</object>
</annotation>
"""


LABELIMG_XML = """<annotation>
    <folder>shots</folder>
    <filename>cat.png</filename>
    <path>C:\\Users\\someone\\shots\\cat.png</path>
    <source><database>Unknown</database></source>
    <size><width>64</width><height>48</height><depth>3</depth></size>
    <segmented>0</segmented>
    <object><name>cat</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
        <bndbox><xmin>5.5</xmin><ymin>3</ymin><xmax>40.25</xmax><ymax>30</ymax></bndbox></object>
</annotation>
"""


LABELME_JSON = {
    "version": "5.4.1", "flags": {},
    "shapes": [
        {"label": "cat", "points": [[40.0, 30.0], [10.0, 5.0]], "group_id": None, "description": "",
         "shape_type": "rectangle", "flags": {}, "mask": None},
        {"label": "dog", "points": [[2, 2], [20, 2], [11, 18]], "group_id": None, "description": "",
         "shape_type": "polygon", "flags": {"difficult": True}, "mask": None},
        {"label": "cat", "points": [[50, 10], [60, 10], [55, 20]], "group_id": 3, "description": "",
         "shape_type": "polygon", "flags": {}, "mask": None},
        {"label": "cat", "points": [[44, 30], [62, 30], [62, 46]], "group_id": 3, "description": "",
         "shape_type": "polygon", "flags": {}, "mask": None},
        {"label": "nose", "points": [[12, 12]], "group_id": None, "description": "", "shape_type": "point",
         "flags": {}, "mask": None},
    ],
    "imagePath": "..\\photos\\pet.jpg", "imageData": "iVBORw0KGgoAAAANSUhEUg==", "imageHeight": 48, "imageWidth": 64,
}


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <job>
      <id>7</id><size>2</size><mode>annotation</mode><overlap>0</overlap><bugtracker></bugtracker>
      <created>2024-05-02 09:12:44.190000+00:00</created><subset>default</subset>
      <start_frame>0</start_frame><stop_frame>1</stop_frame><frame_filter></frame_filter>
      <segments><segment><id>7</id><start>0</start><stop>1</stop><url>http://localhost:8080/api/jobs/7</url></segment></segments>
      <labels>
        <label><name>tree</name><color>#33ddff</color><type>any</type><attributes></attributes></label>
        <label>
          <name>car</name><color>#fa3253</color><type>any</type>
          <attributes><attribute><name>difficult</name><mutable>False</mutable><input_type>checkbox</input_type>
            <default_value>false</default_value><values>false
true</values></attribute></attributes>
        </label>
        <label><name>person</name><color>#b83df5</color><type>polygon</type><attributes></attributes></label>
      </labels>
    </job>
    <dumped>2024-05-02 09:21:13.000000+00:00</dumped>
  </meta>
  <image id="0" name="street/a.png" width="64" height="48">
    <box label="car" source="manual" occluded="0" xtl="10.50" ytl="5.00" xbr="30.25" ybr="20.00" z_order="0">
      <attribute name="difficult">false</attribute>
    </box>
    <box label="car" source="manual" occluded="0" xtl="40.00" ytl="20.00" xbr="50.00" ybr="40.00" rotation="90.00" z_order="0">
      <attribute name="difficult">false</attribute>
    </box>
    <polygon label="person" source="manual" occluded="1" points="40.00,10.00;50.00,10.00;45.00,30.00" z_order="0">
    </polygon>
    <points label="person" source="manual" occluded="0" points="1.00,1.00" z_order="0"></points>
    <tag label="tree" source="manual"></tag>
  </image>
  <image id="1" name="street/b.png" width="64" height="48">
    <box label="car" source="manual" occluded="0" xtl="0.00" ytl="0.00" xbr="64.00" ybr="48.00" z_order="0">
      <attribute name="difficult">true</attribute>
    </box>
  </image>
</annotations>
"""


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<annotation><filename>&lol3;</filename></annotation>
"""
